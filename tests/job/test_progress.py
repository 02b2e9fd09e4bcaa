"""Progress: one live line on a terminal, log lines elsewhere; defaults sized to the machine."""

from __future__ import annotations

import io
import logging
import os
import re

import pytest

from crossenc.config import RuntimeConfig
from crossenc.job.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_live_line_with_rate_and_eta(caplog):
    stream = _Terminal()
    progress = Progress(1000, stream=stream)
    with caplog.at_level(logging.INFO, logger="crossenc"):
        for _ in range(4):
            progress.add(250)
        progress.close()
    text = stream.getvalue()
    assert "\r" in text and "1.00k/1.00k" in text  # redrawn in place, rows done / total
    assert re.search(r"rows/s", text) and "<00:00" in text  # rate and time left
    assert not [r for r in caplog.records if "progress:" in r.getMessage()]


def test_elsewhere_progress_is_log_lines(caplog):
    progress = Progress(1000, every=0.0, stream=io.StringIO())
    with caplog.at_level(logging.INFO, logger="crossenc"):
        progress.add(400)
        progress.add(600)
        progress.close()
    lines = [r.getMessage() for r in caplog.records if "progress:" in r.getMessage()]
    assert lines[0].startswith("progress: 400/1000 rows (40.0%)") and "ETA" in lines[0]
    assert lines[-1].startswith("progress: 1000/1000 rows (100.0%)")


def test_unset_runtime_settings_use_the_machine():
    assert RuntimeConfig().on_machine(2).torch_threads == 2
    assert RuntimeConfig().on_machine(2).replicas == 1
    big = RuntimeConfig().on_machine(32)
    assert (big.replicas, big.torch_threads) == (4, 8)
    preset = RuntimeConfig(replicas=1).on_machine(16)  # a preset's replicas: 1 is kept
    assert (preset.replicas, preset.torch_threads) == (1, 16)
    assert RuntimeConfig(torch_threads=1).on_machine(8).torch_threads == 1  # set: kept
    assert RuntimeConfig(cpus_per_replica=2).on_machine(8).torch_threads is None
    assert RuntimeConfig(gpus_per_replica=1).on_machine(8).torch_threads is None


@pytest.mark.slow
def test_the_command_on_a_terminal_draws_the_bar_and_uses_the_cores(score_on_a_terminal):
    """The real command, its own in-process Ray, stderr on a pseudo-terminal (the run is
    tests/conftest.py's score_on_a_terminal, shared with tests/test_warnings.py)."""
    run = score_on_a_terminal
    err = run.terminal
    assert run.returncode == 0, err[-3000:]
    cores = len(os.sched_getaffinity(0))
    assert f"in-process Ray on {cores} cores: 1 replica(s) x {cores} torch threads" in err
    assert re.search(r"crossenc: +100%\|.*\| 300/300 \[", err), err[-2000:]  # the live line
    assert "progress: " not in err  # no log lines beside it
    assert b"committed to" in run.stdout


@pytest.mark.slow
def test_a_shuffled_rerank_counts_rows_as_the_replicas_score_them(
    ray_local, minilm, pairs_dir, tmp_path, monkeypatch
):
    """The rows of a rerank across files reach the driver only after the shuffle: the progress
    line counts them as the replicas finish them, before the first row is written, once each."""
    import time

    from crossenc.job import progress
    from crossenc.job.accounting import Ledger
    from crossenc.job.run_job import run_job
    from tests.helpers import job_config

    monkeypatch.setattr(progress, "POLL_SECONDS", 0.1)
    seen: dict[str, list[tuple[float, int]]] = {"scored": [], "written": []}
    on_scored, on_progress = Ledger.on_scored, Ledger.on_progress

    def scored(self, rows):
        seen["scored"].append((time.monotonic(), rows))
        on_scored(self, rows)

    def written(self, t, rows, counted=False):
        assert counted  # the rows were counted as scored already
        seen["written"].append((time.monotonic(), rows))
        on_progress(self, t, rows, counted)

    monkeypatch.setattr(Ledger, "on_scored", scored)
    monkeypatch.setattr(Ledger, "on_progress", written)
    cfg = job_config(
        pairs_dir,
        tmp_path / "out",
        minilm,
        task="rerank",
        rerank={"group_by": "qid", "within_files": False},
        runtime={"writers": 2},  # two writers: a shuffle, not one writer ranking it all
    )
    result = run_job(cfg)
    assert sum(rows for _, rows in seen["scored"]) == result.rows_read == 300
    assert seen["written"] and sum(rows for _, rows in seen["written"]) == 300
    first_written = min(t for t, _ in seen["written"])
    before = sum(rows for t, rows in seen["scored"] if t < first_written)
    assert before >= 100, seen  # the line moved while the replicas scored
