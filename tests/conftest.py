"""Shared fixtures: tiny offline models of each architecture, sample data, Ray, an S3 server."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray binds to loopback

from crossenc.testing import ARCHITECTURES, NLI_LABELS, build_tiny_model, write_pairs


def _outside(paths: tuple[str, ...]) -> Any:
    """The first frame of the caller's stack whose file lies under none of ``paths``."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(paths):
        frame = frame.f_back
    return frame


def deprecations_logged_by_ray(factory: Any) -> Any:
    """A log record factory around ``factory``: a Ray record of warning level or above that
    says "deprecated" (Ray logs some deprecations, map_batches(concurrency=...) among them,
    rather than warning) is issued as a DeprecationWarning attributed to the first caller
    outside Ray and logging, so pyproject.toml's filterwarnings turn one made by crossenc or a
    test into an error raised at the call, as they do Ray's warnings. (A record factory, not a
    handler: ray.init replaces the handlers of Ray's loggers.)"""
    ray = importlib.util.find_spec("ray")  # (its folder, without importing it)
    assert ray is not None and ray.origin is not None
    skip = (str(Path(ray.origin).parent) + os.sep, str(Path(logging.__file__).parent) + os.sep)
    skip += (__file__,)

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        rec = factory(*args, **kwargs)
        if rec.name.startswith("ray") and rec.levelno >= logging.WARNING:
            message = rec.getMessage()
            caller = _outside(skip) if "deprecated" in message.lower() else None
            if caller is not None:
                warnings.warn_explicit(
                    message,
                    DeprecationWarning,
                    caller.f_code.co_filename,
                    caller.f_lineno,
                    module=caller.f_globals.get("__name__", ""),
                )
        return rec

    return record


_FACTORY = logging.getLogRecordFactory()


def pytest_configure(config: pytest.Config) -> None:
    logging.setLogRecordFactory(deprecations_logged_by_ray(_FACTORY))


def pytest_unconfigure(config: pytest.Config) -> None:
    logging.setLogRecordFactory(_FACTORY)


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    """(architecture, outputs) -> seeded tiny model folder; 3-output ones carry NLI labels."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for i, arch in enumerate(ARCHITECTURES):
        out[(arch, 1)] = build_tiny_model(root / f"{arch}-1", arch, 1, seed=i)
        out[(arch, 3)] = build_tiny_model(root / f"{arch}-3", arch, 3, NLI_LABELS, seed=10 + i)
    return out


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 (qid, doc_id, query, passage) rows in 3 Parquet files, 10 passages per query."""
    root = tmp_path_factory.mktemp("pairs")
    write_pairs(root, rows=300, files=3, seed=7)
    return root


@pytest.fixture(scope="session")
def ray_local():
    """An in-process Ray for pipeline tests, shut down at the end of the session."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (real HTTP); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_server_process():
    """moto's S3 server in a process of its own; yields its endpoint URL. For clients that hold
    the GIL while they wait on a request (deltalake's history), which would deadlock with the
    in-process server's threads."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield url
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="session")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MiniLM-L6-H384 cross-encoder (real weights, seeded head): slow enough to interrupt."""
    from crossenc.testing import build_minilm_cross_encoder

    return build_minilm_cross_encoder(tmp_path_factory.mktemp("minilm") / "model")
