"""``python -m crossenc.testing``: make demo data or offline models (see :func:`main`)."""

from crossenc.testing import main

main()
