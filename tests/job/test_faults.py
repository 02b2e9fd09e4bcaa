"""Injected failures: a scorer actor killed, the driver killed and resumed, a node lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from crossenc.job.run_job import run_job
from crossenc.output.parts import parts_from_table
from crossenc.testing import write_pairs
from tests.helpers import export_cache, job_config, job_model, read_output

BIN = Path(sys.executable).parent


def _pids_matching(text: str) -> list[int]:
    """Processes whose command line contains text (Ray titles actors by their class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry.name))
    return pids


def _staged_rows(out: Path) -> dict[str, int]:
    """Rows accounted per input file by the journals of any run."""
    done: dict[str, int] = {}
    for journal in out.glob("_temporary/*/journal/*.parquet"):
        try:
            parts = parts_from_table(pq.read_table(journal))
        except (OSError, pa.ArrowInvalid):
            continue
        for part in parts:
            done[part.input_file] = done.get(part.input_file, 0) + part.accounted
    return done


def _assert_exactly_once(out: Path, inp: Path) -> None:
    got = read_output(out).column("pair_id").to_pylist()
    want = pq.read_table(inp).column("pair_id").to_pylist()
    assert len(got) == len(set(got)), "duplicated rows"
    assert sorted(got) == sorted(want), "lost rows"


@pytest.mark.slow
def test_scorer_actor_killed_mid_run(ray_local, minilm, tmp_path):
    write_pairs(tmp_path / "in", rows=480, files=4, seed=3)
    cfg = job_config(
        tmp_path / "in",
        tmp_path / "out",
        minilm,
        input={"keep": ["pair_id"]},
        output={"files": {"max_rows": 80}},
        runtime={"block_rows": 40},
    )
    killed: list[int] = []

    def kill_scorer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if _staged_rows(tmp_path / "out"):  # scoring is under way
                for pid in _pids_matching("ScorerReplica"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_scorer)
    killer.start()
    result = run_job(cfg)
    killer.join()
    assert killed, "no scorer actor was found to kill"
    assert result.rows_written == result.rows_read == 480
    _assert_exactly_once(tmp_path / "out", tmp_path / "in")


@pytest.mark.slow
def test_driver_killed_then_resumed(ray_local, minilm, tmp_path):
    files = write_pairs(tmp_path / "in", rows=640, files=8, seed=5)
    rows_per_file = pq.read_metadata(files[0]).num_rows
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"path": str(tmp_path / "in"), "keep": ["pair_id"]},
                # as job_config's: MiniLM (slow enough to interrupt) on onnx, its export cache
                "model": job_model(minilm)["model"],
                "output": {"path": str(tmp_path / "out"), "files": {"max_rows": 40}},
                "runtime": {"block_rows": 20, "cache_dir": export_cache(minilm)},
            }
        )
    )
    ray_tmp = Path("/tmp") / f"rk{os.getpid()}"  # the killed driver's own Ray, found by path
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [str(BIN / "crossenc"), "score", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if any(n >= rows_per_file for n in _staged_rows(tmp_path / "out").values()):
                break  # at least one input file is fully staged: kill the driver now
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        subprocess.run(["pkill", "-KILL", "-f", str(ray_tmp)], check=False)
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    assert not (tmp_path / "out" / "_commits").exists()  # nothing committed
    # A plain listing shows the killed run's closed files, never a torn one (files are written
    # under hidden names and renamed when complete).
    for f in (tmp_path / "out").glob("*.parquet"):
        assert pq.read_metadata(f).num_rows > 0

    cfg = job_config(
        tmp_path / "in",
        tmp_path / "out",
        minilm,
        input={"keep": ["pair_id"]},
        output={"mode": "resume", "files": {"max_rows": 40}},
        runtime={"block_rows": 20},
    )
    result = run_job(cfg)
    assert result.rows_read == 640
    assert result.files_resumed >= 1
    assert result.rows_resumed >= rows_per_file  # row ranges of partly written files count too
    assert result.rows_scored == 640 - result.rows_resumed > 0  # scored only what was missing
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    summary = manifest["summary"]
    assert manifest["resumed_from"] and summary["rows"]["scored"] == result.rows_scored
    assert summary["rows"]["resumed"] == result.rows_resumed
    # replicas count this run's work; the scores cover every committed row
    assert sum(r["rows"] for r in summary["replicas"]) == result.rows_scored
    assert summary["scores"]["score"]["count"] == 640
    assert summary["throughput"][-1]["rows"] == result.rows_scored
    _assert_exactly_once(tmp_path / "out", tmp_path / "in")


@pytest.mark.slow
def test_worker_node_lost_mid_run(minilm, tmp_path):
    write_pairs(tmp_path / "in", rows=320, files=4, seed=9)
    env = {**os.environ, "RAY_TMPDIR": str(Path("/tmp") / f"rn{os.getpid()}")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.node_loss_job",
            str(tmp_path / "in"),
            str(tmp_path / "out"),
            str(minilm),
        ],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    subprocess.run(["pkill", "-KILL", "-f", env["RAY_TMPDIR"]], check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # Ray may print worker log lines after the report: take the report's own line.
    report = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith('{"events"')))
    assert report["events"] == ["removed", "replaced"]
    assert report["rows_written"] == report["rows_read"] == 320
    _assert_exactly_once(tmp_path / "out", tmp_path / "in")
