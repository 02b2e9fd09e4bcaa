"""Every mistake a user can make ends with a documented exit code and one message naming the
config key or file to change, never a traceback (docs/operations/exit-codes.md). Each case runs
the real command: stores on loopback (moto's S3 server, one that checks credentials, a closed
port), model folders with a file missing, a small tmpfs that fills up while the run stages."""

from __future__ import annotations

import contextlib
import copy
import errno
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import s3fs
import yaml

import crossenc.job.run_job
from crossenc.cli import EXIT_BUG, EXIT_CONFIG, EXIT_ENVIRONMENT, EXIT_FAILED, EXIT_STORAGE, main
from crossenc.errors import StorageError, explain

REPO = Path(__file__).resolve().parents[1]


def closed_port_url() -> str:
    """An http:// URL on loopback where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def store(url: str, key: str = "testing") -> dict[str, Any]:
    """Storage options for a loopback S3 endpoint; one attempt, so a refusal is quick."""
    return {"endpoint_url": url, "key": key, "secret": "testing", "max_attempts": 1}


@pytest.fixture(scope="module")
def bucket(s3_server, pairs_dir, models) -> str:
    """A bucket on the moto server holding the sample pairs and a tiny model."""
    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3_server)
    name = f"errors-{uuid.uuid4().hex[:8]}"
    fs.mkdir(name)
    fs.put(str(pairs_dir) + "/", f"{name}/pairs/", recursive=True)
    fs.put(str(models[("bert", 1)]) + "/", f"{name}/models/bert/", recursive=True)
    yield name
    fs.rm(name, recursive=True)


@pytest.fixture(scope="module")
def auth_server(pairs_dir) -> str:
    """moto's S3 server in its own process with authentication on: an access key it does not
    know is refused (InvalidAccessKeyId), as AWS does. Holds bucket ``locked`` with pairs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=url)
        fs.mkdir("locked")
        fs.put(str(pairs_dir) + "/", "locked/pairs/", recursive=True)
        # From here on every request must be signed with a key moto's IAM knows.
        reset = urllib.request.Request(
            f"{url}/moto-api/reset-auth", b"0", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(reset, timeout=10)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _mount_tmpfs(folder: Path, size: str) -> bool:
    """Mount a small tmpfs at folder (root with CAP_SYS_ADMIN only); False when refused."""
    if os.environ.get("CROSSENC_TEST_DISK_FULL") == "failpoint" or not shutil.which("mount"):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
    )
    return proc.returncode == 0


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of folder until ``leave`` bytes remain free."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))


@dataclass
class Ctx:
    """What a case builds its run from."""

    tmp: Path
    models: dict
    pairs: Path
    s3: str  # the moto server's endpoint
    bucket: str
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch

    def model_copy(self, *remove: str, add: str | None = None) -> str:
        """A copy of the tiny BERT model folder without some files (and with one more)."""
        folder = self.tmp / "model"
        shutil.copytree(self.models[("bert", 1)], folder)
        for name in remove:
            (folder / name).unlink()
        if add:
            (folder / add).write_bytes(b"not really pickle")
        return str(folder)


@dataclass
class Run:
    """One case's run: config overrides, environment, and how to run the command."""

    config: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    subprocess: bool = False  # a fresh process: environment read at import (HF_HUB_OFFLINE)
    before_start: bool = True  # must fail before anything starts: run_job is never reached
    names: list[str] = field(default_factory=list)  # more the message must hold
    sets: list[str] = field(default_factory=list)  # --set overrides on the command line


def _input_unreachable(c: Ctx) -> Run:
    url = closed_port_url()
    return Run({"input": {"path": "s3://pairs/in/", "storage": store(url)}}, names=[url])


def _output_unreachable(c: Ctx) -> Run:
    url = closed_port_url()
    return Run({"output": {"path": "s3://scored/out/", "storage": store(url)}}, names=[url])


def _model_unreachable(c: Ctx) -> Run:
    url = closed_port_url()
    return Run({"model": {"name": "s3://models/bert", "storage": store(url)}}, names=[url])


def _model_storage_unset(c: Ctx) -> Run:
    """The observed mistake: the endpoint set for input and output, not for the model. With
    no AWS credentials anywhere, botocore says so at once (with some, it would try AWS)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        c.monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    env = {
        "AWS_SHARED_CREDENTIALS_FILE": str(c.tmp / "none"),
        "AWS_CONFIG_FILE": str(c.tmp / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return Run(
        {
            "input": {"path": f"s3://{c.bucket}/pairs/", "storage": store(c.s3)},
            "output": {"path": f"s3://{c.bucket}/scored/", "storage": store(c.s3)},
            "model": {"name": f"s3://{c.bucket}/models/bert"},
        },
        env=env,
        names=[c.s3],
    )


def _wrong_credentials(c: Ctx) -> Run:
    url = c.request.getfixturevalue("auth_server")
    return Run({"input": {"path": "s3://locked/pairs/", "storage": store(url, key="AKIAWRONG")}})


def _input_bucket_missing(c: Ctx) -> Run:
    return Run({"input": {"path": "s3://crossenc-no-such-bucket/in/", "storage": store(c.s3)}})


def _output_bucket_missing(c: Ctx) -> Run:
    return Run({"output": {"path": "s3://crossenc-no-such-bucket/out/", "storage": store(c.s3)}})


def _model_without_weights(c: Ctx) -> Run:
    return Run({"model": {"name": c.model_copy("model.safetensors")}})


def _model_with_pickle_weights_only(c: Ctx) -> Run:
    return Run({"model": {"name": c.model_copy("model.safetensors", add="pytorch_model.bin")}})


def _model_without_tokenizer(c: Ctx) -> Run:
    return Run({"model": {"name": c.model_copy("tokenizer.json")}})


def _model_without_config(c: Ctx) -> Run:
    return Run({"model": {"name": c.model_copy("config.json")}})


def _model_folder_missing(c: Ctx) -> Run:
    return Run({"model": {"name": str(c.tmp / "no-such-model")}})


def _hub_offline(c: Ctx) -> Run:
    return Run(
        {"model": {"name": "nobody/not-a-model"}},
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(c.tmp / "hf")},
        subprocess=True,
    )


def _output_under_a_file(c: Ctx) -> Run:
    """Unwritable even for root: a regular file stands where the output folder's parent is."""
    (c.tmp / "a-file").write_text("not a folder")
    return Run({"output": {"path": str(c.tmp / "a-file" / "out")}}, names=["a-file"])


def _output_read_only_folder(c: Ctx) -> Run:
    if os.geteuid() == 0:
        pytest.skip("root writes into any folder whatever its mode")
    folder = c.tmp / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    c.request.addfinalizer(lambda: folder.chmod(0o755))
    return Run({"output": {"path": str(folder / "out")}}, names=[str(folder)])


def _disk_full_while_staging(c: Ctx) -> Run:
    """A real full disk: the output on a 256 KiB tmpfs filled but for one page, which the
    run record takes; the writer's first output file then fails with ENOSPC in its Ray actor.
    Where no tmpfs can be mounted (not root), a failpoint raises that OSError at the writer's
    first write instead, in a fresh process whose Ray workers inherit the setting."""
    disk = c.tmp / "disk"
    if _mount_tmpfs(disk, "256k"):
        c.request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(disk)], check=False))
        _fill(disk, leave=4096)
        c.request.getfixturevalue("ray_local")
        return Run({"output": {"path": str(disk / "out")}}, before_start=False)
    disk.mkdir()
    return Run(
        {"output": {"path": str(disk / "out")}},
        env={"CROSSENC_FAILPOINT": "writer.write:enospc"},
        subprocess=True,
        before_start=False,
    )


def _unexpected_error(c: Ctx) -> Run:
    return Run(
        {},
        env={"CROSSENC_FAILPOINT": "plan.after_model:raise"},
        sets=["input.storage.secret=s3cr3t-not-in-the-crash-file"],
    )


def _unexpected_error_after_scoring(c: Ctx) -> Run:
    """A bug in the driver after the run scored (here: right after the commit record)."""
    c.request.getfixturevalue("ray_local")
    return Run({}, env={"CROSSENC_FAILPOINT": "commit.after_record:raise"}, before_start=False)


# case -> (setup, exit code, what the message must say). docs/operations/exit-codes.md lists
# the same.
CASES: dict[str, tuple[Callable[[Ctx], Run], int, list[str]]] = {
    "input endpoint unreachable": (
        _input_unreachable,
        EXIT_STORAGE,
        ["input.path s3://pairs/in/", "cannot reach", "input.storage.endpoint_url"],
    ),
    "output endpoint unreachable": (
        _output_unreachable,
        EXIT_STORAGE,
        ["output.path s3://scored/out/", "cannot reach", "output.storage.endpoint_url"],
    ),
    "model endpoint unreachable": (
        _model_unreachable,
        EXIT_STORAGE,
        ["model.name s3://models/bert", "cannot reach", "model.storage.endpoint_url"],
    ),
    "model.storage unset, model on s3://": (
        _model_storage_unset,
        EXIT_STORAGE,
        ["model.name s3://", "model.storage is unset", "read from AWS S3", "endpoint_url"],
    ),
    "wrong credentials": (
        _wrong_credentials,
        EXIT_STORAGE,
        ["input.path s3://locked/pairs/", "InvalidAccessKeyId", "input.storage.key"],
    ),
    "input bucket missing": (
        _input_bucket_missing,
        EXIT_STORAGE,
        ["input.path", "bucket 'crossenc-no-such-bucket' does not exist"],
    ),
    "output bucket missing": (
        _output_bucket_missing,
        EXIT_STORAGE,
        ["output.path", "bucket 'crossenc-no-such-bucket' does not exist"],
    ),
    "model folder without weights": (
        _model_without_weights,
        EXIT_CONFIG,
        ["model.name", "no weights", "model.safetensors"],
    ),
    "model folder with pickle weights only": (
        _model_with_pickle_weights_only,
        EXIT_CONFIG,
        ["model.name", "model.allow_pickle_weights"],
    ),
    "model folder without tokenizer": (
        _model_without_tokenizer,
        EXIT_CONFIG,
        ["model.name", "no tokenizer files", "tokenizer.json"],
    ),
    "model folder without config.json": (
        _model_without_config,
        EXIT_CONFIG,
        ["model.name", "no config.json"],
    ),
    "model folder missing": (
        _model_folder_missing,
        EXIT_CONFIG,
        ["model.name", "no-such-model: no such folder"],
    ),
    "Hub id offline": (
        _hub_offline,
        EXIT_STORAGE,
        ["model.name nobody/not-a-model", "HF_HUB_OFFLINE", "local folder or an s3:// folder"],
    ),
    "model.compile on onnx": (
        lambda c: Run({"model": {"backend": "onnx", "compile": True}}),
        EXIT_CONFIG,
        ["model.compile needs model.backend torch"],
    ),
    "model.quantize on torch": (
        lambda c: Run({"model": {"quantize": "int8"}}),
        EXIT_CONFIG,
        ["model.quantize int8 needs model.backend onnx or openvino"],
    ),
    "output path under a file": (
        _output_under_a_file,
        EXIT_STORAGE,
        ["output.path", "not a folder", "is a file"],
    ),
    "output folder read-only": (
        _output_read_only_folder,
        EXIT_STORAGE,
        ["output.path", "permission denied"],
    ),
    "disk full while staging": (
        _disk_full_while_staging,
        EXIT_STORAGE,
        ["output.path", "disk full", "No space left on device"],
    ),
    "unexpected error": (
        _unexpected_error,
        EXIT_BUG,
        ["internal error (a bug; please report it)", "FailpointError", "full traceback in"],
    ),
    "unexpected error after scoring": (
        _unexpected_error_after_scoring,
        EXIT_BUG,
        ["internal error (a bug; please report it)", "commit.after_record", "full traceback in"],
    ),
}


def _merge(base: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in more.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _crossenc() -> list[str]:
    script = Path(sys.executable).parent / "crossenc"
    return [str(script)] if script.exists() else [sys.executable, "-m", "crossenc.cli"]


# The cases that run a whole Ray job (they fail while it stages or commits): slow
JOB_CASES = {"disk full while staging", "unexpected error after scoring"}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in JOB_CASES else c for c in CASES]
)
def test_mistake_gets_its_exit_code_and_names_what_to_change(
    case, models, pairs_dir, s3_server, bucket, tmp_path, request, monkeypatch, capsys
):
    setup, code, expected = CASES[case]
    ctx = Ctx(tmp_path, models, pairs_dir, s3_server, bucket, request, monkeypatch)
    run = setup(ctx)
    base = {
        "input": {"path": str(pairs_dir), "keep": ["qid", "doc_id"]},
        "model": {"name": str(models[("bert", 1)])},
        "output": {"path": str(tmp_path / "out")},
        "runtime": {"cache_dir": str(tmp_path / "cache")},
    }
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(_merge(base, run.config)))
    args = ["score", "--config", str(config)]
    args += [arg for item in run.sets for arg in ("--set", item)]
    crash_dir = tmp_path / "crashes"
    env = {**run.env, "CROSSENC_CRASH_DIR": str(crash_dir)}
    if run.subprocess:
        proc = subprocess.run(
            [*_crossenc(), *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        got, err = proc.returncode, proc.stderr
    else:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        # main() logs to this test's stderr (not to an earlier test's, closed, capture)
        monkeypatch.setattr(logging.getLogger(), "handlers", [])
        if run.before_start:  # nothing may start: the job is never reached

            def refuse(*_: object, **__: object) -> None:
                raise AssertionError("run_job was reached: the mistake was not caught before")

            monkeypatch.setattr(crossenc.job.run_job, "run_job", refuse)
        got, err = main(args), capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("crossenc: ")]
    assert lines, err[-3000:]
    message = lines[-1]
    assert got == code, err[-3000:]
    for text in [*expected, *run.names]:
        assert text in message, f"{text!r} not in {message!r}"
    # No traceback on stderr, but for those of logging handlers that earlier tests' captures,
    # since closed, left on Ray's loggers (logging's own report, not the command's).
    own = re.sub(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", "", err, flags=re.S)
    assert "Traceback (most recent call last)" not in own, own[-3000:]
    if code == EXIT_BUG:
        path = Path(message.rsplit("full traceback in ", 1)[1])
        assert path.parent == crash_dir and path.is_file()
        report = path.read_text()
        assert "Traceback (most recent call last)" in report and "FailpointError" in report
        assert "crossenc score --config" in report and "s3cr3t" not in report
    if run.before_start:
        assert not (tmp_path / "out").exists()


def test_docs_list_every_exit_code():
    page = (REPO / "docs" / "operations" / "exit-codes.md").read_text()
    table = page[page.index("Exit codes, for schedulers:") :]
    for code in (0, 2, 3, 4, 5, 6, 7, EXIT_STORAGE, EXIT_BUG, EXIT_ENVIRONMENT):
        assert f"\n| {code} |" in table


class _RemoteError(Exception):
    """Stands for a Ray task error: a worker's traceback as text, the objects lost."""

    __module__ = "ray.exceptions"


@pytest.mark.parametrize(
    ("error", "code", "expected"),
    [
        (
            _RemoteError(
                "ray::MapBatches(write_block)()\n  File ...\n"
                "crossenc.errors.StorageError: output.path s3://b/out: disk full (...)\n\n"
                "ray.exceptions.UserCodeException: UDF failed to process a data block."
            ),
            EXIT_STORAGE,
            "output.path s3://b/out: disk full",
        ),
        (
            _RemoteError(
                "ray::ReadRowGroups()\nPermissionError: Forbidden\n"
                "botocore.exceptions.ClientError: An error occurred (InvalidAccessKeyId) when "
                "calling the GetObject operation: The AWS Access Key Id you provided does not "
                "exist in our records."
            ),
            EXIT_STORAGE,
            "refused the credentials",
        ),
        (
            _RemoteError("ray::ScorerReplica()\nRuntimeError: the model blew up"),
            EXIT_FAILED,
            "run failed: RuntimeError: the model blew up; nothing committed",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), EXIT_STORAGE, "disk full"),
        (OSError(errno.EFBIG, "File too large"), EXIT_STORAGE, "file too large"),
        (StorageError("model.name s3://m: x", "model"), EXIT_STORAGE, "model.name s3://m: x"),
        (KeyError("boom"), EXIT_BUG, "internal error (a bug; please report it): KeyError"),
    ],
    ids=[
        "worded-in-worker",
        "credentials-in-worker",
        "scoring-failure",
        "enospc",
        "efbig",
        "worded",
        "bug",
    ],
)
def test_explain_words_errors_from_workers_and_the_driver(
    error, code, expected, tmp_path, monkeypatch
):
    monkeypatch.setenv("CROSSENC_CRASH_DIR", str(tmp_path))
    got, message = explain(error)
    assert got == code and expected in message, message
