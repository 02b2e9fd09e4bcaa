"""crossenc: distributed batch scoring of text pairs with cross-encoders on Ray Data."""

__version__ = "0.1.0"
