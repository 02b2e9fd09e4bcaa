"""Shared fixtures: tiny offline models of each architecture, sample data, Ray (in-process, or
a head of its own), an S3 server, one ``crossenc score`` run on a terminal."""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import pty
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray binds to loopback

from crossenc.job.cluster import IDLE_WORKER_MS
from crossenc.testing import ARCHITECTURES, NLI_LABELS, build_tiny_model, write_pairs

BIN = Path(sys.executable).parent  # this environment's ray, python, crossenc and moto_server
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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
    """An in-process Ray for pipeline tests, shut down at the end of the session: one for the
    whole suite, started as crossenc's own (ensure_ray) starts it but on 2 CPUs, so run_job and
    ``crossenc score`` in this process join it. Its idle workers are kept, as crossenc keeps
    them, so a job's read, tokenize and write tasks reuse the workers an earlier test's job
    started (a new one imports crossenc and its libraries again: seconds on 2 cores)."""
    import ray

    ray.init(
        num_cpus=2,
        _system_config={"idle_worker_killing_time_threshold_ms": IDLE_WORKER_MS},
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        ignore_reinit_error=True,
    )
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
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
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


@dataclass(frozen=True)
class CommandRun:
    """What a finished ``crossenc score`` process left: its exit status, what its terminal
    showed (stderr), its stdout and its output folder."""

    returncode: int
    terminal: str
    stdout: bytes
    output: Path


@pytest.fixture(scope="session")
def score_on_a_terminal(models, pairs_dir, tmp_path_factory) -> CommandRun:
    """One ``crossenc score`` run as a user starts it on a fresh machine: the installed command,
    crossenc's own in-process Ray (no RAY_ADDRESS, no token, a Ray temp dir of its own), stderr
    on a 120-column pseudo-terminal; the msmarco-rerank preset on the tiny BERT over pairs_dir
    (300 rows). Run once, for the tests of its terminal (tests/job/test_progress.py) and of its
    log (tests/test_warnings.py): a process with its own Ray takes ~20 s on 2 cores."""
    out = tmp_path_factory.mktemp("score-on-a-terminal") / "out"
    env = {**os.environ, "RAY_TMPDIR": str(Path("/tmp") / f"rw{os.getpid()}")}
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE"):  # crossenc's own Ray, as on a fresh machine
        env.pop(name, None)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 columns
    cmd = [
        str(BIN / "crossenc"),
        "score",
        "--config",
        str(CONFIGS / "msmarco-rerank.yaml"),
        "--set",
        f"model.name={models[('bert', 1)]}",
        "--set",
        f"input.path={pairs_dir}",
        "--set",
        f"output.path={out}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout, _ = proc.communicate(timeout=300)
    os.close(leader)
    terminal = b"".join(chunks).decode(errors="replace")
    return CommandRun(proc.returncode, terminal, stdout, out)


@pytest.fixture(scope="session")
def ray_head():
    """A Ray head on 127.0.0.1 with its own ports, temp dir and auth token, for the tests that
    need a real head (``ray job submit``, the doctor's cluster check); stopped at the end."""
    dash = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # jobs run this environment's python
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep Ray on loopback, not the host's IP
        "RAY_AUTH_MODE": "token",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # stop at once, not after a 30 s drain
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    env.pop("RAY_ADDRESS", None)
    temp = Path("/tmp") / f"ray-{secrets.token_hex(3)}"  # short: socket paths have a length limit
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={free_port()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--disable-usage-stats",
            # Own agent ports: the defaults may be held by another Ray on this machine.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--num-cpus=2",
            f"--temp-dir={temp}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
        except urllib.error.HTTPError:
            break  # the server answers (401 without token): it is up
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the Ray head did not start")
            time.sleep(1)
        else:
            break
    yield url, env
    os.killpg(proc.pid, signal.SIGTERM)
    try:  # `ray start --block` sometimes outlives SIGTERM (30 s of CI's teardown): kill it then
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-KILL", "-f", str(temp)], check=False)
    shutil.rmtree(temp, ignore_errors=True)
