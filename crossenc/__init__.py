"""crossenc: distributed batch scoring of text pairs with cross-encoders on Ray Data.

``crossenc.scorer(config)`` returns a Ray Data step (dataset of pairs -> dataset of scores);
``crossenc.run(config)`` runs the whole committed job. See :mod:`crossenc.api`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["JobConfig", "RunResult", "run", "scorer"]


def __getattr__(name: str) -> Any:
    """The API, imported on first use (``import crossenc`` stays light: no Ray, no torch)."""
    if name in ("scorer", "run"):
        from crossenc import api

        return getattr(api, name)
    if name == "JobConfig":
        from crossenc.config import JobConfig

        return JobConfig
    if name == "RunResult":
        from crossenc.job.result import RunResult

        return RunResult
    raise AttributeError(f"module 'crossenc' has no attribute {name!r}")
