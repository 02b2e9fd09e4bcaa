"""The commit protocol: one conditional write decides, two runs at once, a driver killed inside
the commit, and output written by the previous layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import s3fs
import yaml

from crossenc.cli import EXIT_CONCURRENT, EXIT_OK, main
from crossenc.config import OutputConfig, StorageConfig
from crossenc.job.run_job import run_job
from crossenc.models.tokenize import ERROR, ROW, SOURCE, TRUNCATED
from crossenc.output.commit import (
    COMMITS,
    MANIFEST,
    SUCCESS,
    ConcurrentRunError,
    Manifest,
    RunRecord,
    commit,
    latest_commit,
    read_manifest,
    write_run_record,
)
from crossenc.output.parts import new_run_id
from crossenc.output.writer import RollingWriter, WriterOptions
from crossenc.storage import resolve
from crossenc.testing import write_pairs
from crossenc.testing.failpoints import EXIT_CODE as FAILPOINT_EXIT
from tests.helpers import job_config, job_model, read_output

BIN = Path(sys.executable).parent


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path, s3_server):
    """An empty output location on local disk or on the moto server."""
    if request.param == "local":
        yield OutputConfig(path=str(tmp_path / "out"))
        return
    storage = StorageConfig(endpoint_url=s3_server, key="testing", secret="testing")
    fs = s3fs.S3FileSystem(**storage.s3fs_kwargs())
    bucket = f"commit-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    yield OutputConfig(path=f"s3://{bucket}/out", storage=storage)
    fs.rm(bucket, recursive=True)


def _stage(out: OutputConfig, run_id: str, tag: int, rows: int = 30, bad: int = 0):
    """Write one run's parts (3 input files, files of 7 rows) as a job's writer does; the
    first ``bad`` rows of each input file are dead letters."""
    writer = RollingWriter(out, run_id, "w0", WriterOptions(max_rows=7))
    parts = []
    for f in range(3):
        n = rows // 3
        block = pa.table(
            {
                "tag": pa.array([tag] * n),
                "pair_id": pa.array(np.arange(n) + f * n),
                "score": pa.array(np.linspace(0, 1, n), pa.float32()),
                TRUNCATED: pa.array([False] * n),
                SOURCE: pa.array([f"in/{f}.parquet"] * n),
                ROW: pa.array(np.arange(n)),
                ERROR: pa.array(["empty_text:query"] * bad + [None] * (n - bad), pa.string()),
            }
        )
        parts += writer.append(block)
    return parts + writer.flush()


def _manifest(run_id: str) -> Manifest:
    return Manifest(run_id, [], [], [], [], 30, 30, 0, 0, {}, "cfg", {}, "test")


def _plain_rows(out: OutputConfig) -> pa.Table:
    loc = resolve(out.path, out.storage)
    return pads.dataset(loc.path, filesystem=loc.arrow_fs, format="parquet").to_table()


def _race(output: OutputConfig, staged: dict, base: int) -> dict[str, str]:
    """Commit every staged run at the same moment, one thread each; what became of each."""
    barrier = threading.Barrier(len(staged))
    outcome: dict[str, str] = {}

    def race(run_id: str) -> None:
        barrier.wait()
        try:
            commit(output, _manifest(run_id), staged[run_id], base)
            outcome[run_id] = "committed"
        except ConcurrentRunError as err:
            outcome[run_id] = str(err)

    threads = [threading.Thread(target=race, args=(r,)) for r in staged]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcome


def test_two_runs_from_the_same_state_exactly_one_commits(output):
    """Rounds of two runs racing to commit over the same base: each round exactly one wins,
    the loser's files are gone, and readers see only the winner, on local disk and on S3."""
    loc = resolve(output.path, output.storage)
    for round_ in range(3):
        base, _ = latest_commit(output)
        runs = [new_run_id(), new_run_id()]
        staged = {}
        for tag, run_id in enumerate(runs):
            write_run_record(output, RunRecord(run_id, "cfg", {}, base))
            staged[run_id] = _stage(output, run_id, tag)
        outcome = _race(output, staged, base)
        winners = [r for r in runs if outcome[r] == "committed"]
        assert len(winners) == 1, outcome
        (winner,) = winners
        loser = next(r for r in runs if r != winner)
        assert f"another run ({winner}) committed" in outcome[loser]
        assert "nothing of this run was committed" in outcome[loser]
        manifest = read_manifest(output)
        assert manifest["run_id"] == winner and manifest["generation"] == base + 1
        assert json.loads(loc.fs.cat_file(loc.join(MANIFEST)))["run_id"] == winner
        assert loc.fs.cat_file(loc.join(SUCCESS)).decode().strip() == winner
        names = {p.rsplit("/", 1)[-1] for p in loc.fs.ls(loc.path, detail=False)}
        assert not any(loser in n for n in names)  # the loser removed its own files
        table = _plain_rows(output)
        tag = runs.index(winner)
        assert set(table["tag"].to_pylist()) == {tag}
        assert sorted(table["pair_id"].to_pylist()) == list(range(30))
        assert len(manifest["files"]) == 5  # 30 rows in files of at most 7
        assert round_ + 1 == latest_commit(output)[0]


@pytest.mark.slow
def test_two_jobs_on_one_output_at_once_exit_0_and_7(ray_local, models, tmp_path):
    write_pairs(tmp_path / "in", rows=200, files=4, seed=2)
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"path": str(tmp_path / "in"), "keep": ["pair_id"]},
                "model": {"name": str(models[("bert", 1)])},
                "output": {"path": str(tmp_path / "out")},  # output.mode: error, the default
                # two jobs share the test's 2-CPU Ray: half a CPU per scorer leaves room for
                # both pipelines' read and tokenize tasks
                "runtime": {"block_rows": 25, "cpus_per_replica": 0.5},
            }
        )
    )
    codes: list[int] = []
    barrier = threading.Barrier(2)

    def job() -> None:
        barrier.wait()
        codes.append(main(["score", "--config", str(config)]))

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [EXIT_OK, EXIT_CONCURRENT]
    got = read_output(tmp_path / "out")["pair_id"].to_pylist()
    assert sorted(got) == list(range(200))  # one run's rows, each once
    assert len(list((tmp_path / "out" / COMMITS).iterdir())) == 1


POINTS = [
    "commit.before_record",
    "commit.after_record",
    "commit.after_unset",
    "commit.after_manifest",
    "commit.after_success",
]


def _reader_view(out: Path) -> tuple[str, list[int]] | None:
    """What a reader that trusts _SUCCESS sees: the run it names and that run's rows."""
    if not (out / SUCCESS).exists():
        return None
    run = (out / SUCCESS).read_text().strip()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["run_id"] == run
    rows: list[int] = []
    for f in manifest["files"]:
        rows += pq.read_table(out / f["path"])["pair_id"].to_pylist()
    return run, rows


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_driver_killed_during_commit_then_resumed(ray_local, models, tmp_path, point):
    """Night 1 is committed; night 2 (overwrite) is killed at a step of its commit. A reader
    trusting _SUCCESS sees night 1 whole or night 2 whole, never a mix; the same command with
    output.mode=resume then leaves exactly night 2, each row once, nothing of night 1."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_pairs(inp, rows=120, files=3, seed=4)
    night1 = run_job(job_config(inp, out, models[("bert", 1)], input={"keep": ["pair_id"]}))
    config = tmp_path / "night2.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"path": str(inp), "keep": ["pair_id"]},
                **job_model(models[("bert", 1)]),
                "output": {"path": str(out), "mode": "overwrite", "files": {"max_rows": 50}},
            }
        )
    )
    # The driver joins the suite's Ray, as a job's driver joins a cluster: it dies at the
    # failpoint, the cluster (and its workers' cleanup of the dead job) lives on.
    address = ray_local.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_ADDRESS": address, "CROSSENC_FAILPOINT": point}
    proc = subprocess.run(
        [str(BIN / "crossenc"), "score", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == FAILPOINT_EXIT, proc.stderr[-3000:]
    assert f"failpoint {point} reached" in proc.stderr
    view = _reader_view(out)
    if view is not None:
        run, rows = view
        assert sorted(rows) == list(range(120))  # one whole run, whichever it is
        assert (run == night1.run_id) == (point in POINTS[:2])

    resumed = job_config(
        inp, out, models[("bert", 1)], input={"keep": ["pair_id"]}, output={"mode": "resume"}
    )
    result = run_job(resumed)
    run, rows = _reader_view(out)
    assert run != night1.run_id and sorted(rows) == list(range(120))
    if point != "commit.before_record":  # night 2 was committed: the resume finished it
        assert result.already_committed and result.rows_scored == 0
    else:  # night 2's files were taken over, not scored again
        assert result.rows_scored == 0 and result.rows_resumed == 120
    assert sorted(read_output(out)["pair_id"].to_pylist()) == list(range(120))  # plain listing
    assert not (out / "_temporary").exists()


@pytest.mark.slow
def test_output_of_the_previous_layout_is_read_resumed_and_replaced(
    ray_local, models, pairs_dir, tmp_path
):
    """A folder committed by crossenc before commit records (parts moved into place, then
    _manifest.json and _SUCCESS): compare_to reads it, resume sees it committed, overwrite
    replaces it and removes its files."""
    out = tmp_path / "old"
    cfg = job_config(pairs_dir, out, models[("bert", 1)])
    first = run_job(cfg)
    # Rewrite it as the previous version left it: no _commits/, parts named part-<hex>.
    manifest = json.loads((out / MANIFEST).read_text())
    for f in manifest["files"]:
        legacy = f"part-{uuid.uuid4().hex}.parquet"
        (out / f["path"]).rename(out / legacy)
        f["path"] = legacy
    for record in (out / COMMITS).iterdir():
        record.unlink()
    (out / COMMITS).rmdir()
    del manifest["generation"], manifest["layout"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    legacy_files = {f["path"] for f in manifest["files"]}

    assert read_manifest(OutputConfig(path=str(out)))["run_id"] == first.run_id
    resumed = run_job(job_config(pairs_dir, out, models[("bert", 1)], output={"mode": "resume"}))
    assert resumed.already_committed
    other = tmp_path / "new"
    night2 = run_job(
        job_config(pairs_dir, other, models[("bert", 1)], output={"compare_to": str(out)})
    )
    assert night2.summary["drift"]["previous_run_id"] == first.run_id
    again = run_job(job_config(pairs_dir, out, models[("bert", 1)], output={"mode": "overwrite"}))
    assert read_manifest(OutputConfig(path=str(out)))["run_id"] == again.run_id
    assert not legacy_files & {p.name for p in out.iterdir()}
    assert read_output(out).num_rows == 300


def test_a_dead_letter_folder_shared_by_two_outputs_keeps_the_other_outputs_files(tmp_path):
    shared = str(tmp_path / "dead")
    a = OutputConfig(path=str(tmp_path / "a"), dead_letter=shared)
    b = OutputConfig(path=str(tmp_path / "b"), dead_letter=shared)
    runs = []
    for out in (b, a, a):  # b commits, then a twice (the second replaces the first)
        base, _ = latest_commit(out)
        runs.append(new_run_id())
        write_run_record(out, RunRecord(runs[-1], "cfg", {}, base))
        commit(out, _manifest(runs[-1]), _stage(out, runs[-1], 0, bad=2), base)
    listed = {p.name for p in (tmp_path / "dead").iterdir()}
    kept = {Path(f["path"]).name for o in (a, b) for f in read_manifest(o)["dead_letter_files"]}
    assert listed == kept
    assert {n for n in listed if runs[0] in n} and {n for n in listed if runs[2] in n}
    assert not {n for n in listed if runs[1] in n}  # a's first run's dead letters are gone
