"""The cache of exported models that the ONNX Runtime and OpenVINO backends share.

An export lives under ``<runtime.cache_dir>/<kind>/<key>/`` (default ``~/.cache/crossenc/<kind>``),
``key`` a hash of the model's files (:func:`crossenc.models.describe.export_digest`, drawn once
by the driver) and every option and version that changes the exported graph, so a changed model
or option never reuses a stale one. Concurrent replicas on one node share one
export: a file lock serialises them, and the folder appears by an atomic rename only when
complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_root(cache_dir: str | None, kind: str) -> Path:
    """``<cache_dir>/<kind>``, or ``~/.cache/crossenc/<kind>`` when runtime.cache_dir is unset."""
    base = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "crossenc"
    return base / kind


def options_key(options: dict[str, Any]) -> str:
    """A short hash of an export's options (JSON-ready values)."""
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:20]


def cached_export(root: Path, key: str, filename: str, build: Callable[[Path], None]) -> Path:
    """``<root>/<key>/<filename>``, built on first use: ``build(folder)`` writes it (and any
    file beside it) into a temporary folder, renamed into place once complete, under a file
    lock that concurrent replicas share (the first builds, the others wait and reuse it)."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / filename).is_file():
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}-"))
            try:
                build(tmp)
                if target.exists():  # a partial folder from an older layout
                    shutil.rmtree(target)
                os.rename(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target / filename
