"""Delta Lake and Iceberg output: one table commit per run, read back by deltalake / pyiceberg
and by DuckDB, row by row against the Parquet output of the same config; partitions, overwrite
of one, idempotent retried commits, two runs racing, a run killed before its commit, commit
metadata and ``crossenc history``.

Every read of a table's rows (tests.helpers.table_rows) is DuckDB's own reader's too:
``delta_scan`` and ``iceberg_scan`` (httpfs on the moto server) from the extension files the
duckdb-ext-* packages ship, LOADed with nothing downloaded; the two must read the same rows.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from crossenc.cli import EXIT_CONFIG, EXIT_OK, main
from crossenc.config import ConfigError, OutputConfig
from crossenc.job.run_job import run_job
from crossenc.models.tokenize import ERROR, ROW, SOURCE, TRUNCATED
from crossenc.output.commit import ConcurrentRunError, Manifest
from crossenc.output.committers import committer_for, previous_manifest
from crossenc.output.parts import new_run_id
from crossenc.output.writer import RollingWriter, WriterOptions
from crossenc.testing import build_tiny_model, write_pairs
from crossenc.testing.failpoints import FailpointError
from tests.helpers import (
    assert_same_rows,
    job_config,
    read_output,
    sorted_rows,
    table_output,
    table_rows,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny BERT for the module."""
    return build_tiny_model(tmp_path_factory.mktemp("tables-model") / "bert", "bert", 1, seed=3)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A night of 120 pairs in 3 files, and a smaller one of 60."""
    root = tmp_path_factory.mktemp("tables-pairs")
    write_pairs(root / "night", rows=120, files=3, seed=4)
    write_pairs(root / "small", rows=60, files=2, seed=5)
    return {"night": root / "night", "small": root / "small"}


@pytest.fixture(params=["delta-local", "iceberg-local", "delta-s3", "iceberg-s3"])
def table(request, tmp_path, s3_server_process) -> dict:
    """The output section of an empty table, local or on the moto server."""
    with table_output(request.param, tmp_path, s3_server_process) as out:
        yield out


def _out(section: dict, **changes) -> OutputConfig:
    return OutputConfig.model_validate({**section, **changes})


# -- the committers on their own: staged files as a job's writer leaves them ---------------------


def _stage(out: OutputConfig, run_id: str, rows: int = 30) -> list:
    """One run's files (3 input files, files of 7 rows), as a job's writer writes them."""
    writer = RollingWriter(out, run_id, "w0", WriterOptions(max_rows=7))
    parts = []
    for f in range(3):
        n = rows // 3
        block = pa.table(
            {
                "pair_id": pa.array(np.arange(n) + f * n),
                "score": pa.array(np.linspace(0, 1, n), pa.float32()),
                TRUNCATED: pa.array([False] * n),
                SOURCE: pa.array([f"in/{f}.parquet"] * n),
                ROW: pa.array(np.arange(n)),
                ERROR: pa.array([None] * n, pa.string()),
            }
        )
        parts += writer.append(block)
    return parts + writer.flush()


def _manifest(run_id: str, rows: int = 30) -> Manifest:
    model = {"name": "tiny", "weights_sha256": "ab" * 32}
    summary = {"run": run_id, "scores": {"score": {"mean": 0.5}}}
    return Manifest(
        run_id, [], [], [], [], rows, rows, 0, 0, model, "cfg123", {}, "test", summary=summary
    )


def test_commit_partitions_overwrite_retries_and_metadata(table):
    """Night d1, night d2 (appended), a retried commit of d2 (no duplicate), then an overwrite
    of d1: each is one table version, readers see each partition's latest run exactly, and
    every commit carries its run's facts."""
    out1 = _out(table)
    committer = committer_for(out1)
    r1 = new_run_id()
    committer.commit(_manifest(r1), _stage(out1, r1), committer.prepare()[0])
    v1 = committer.version()

    out2 = _out(table, partition_value={"dt": "d2"})
    c2 = committer_for(out2)
    r2, base = new_run_id(), c2.prepare()[0]
    parts2 = _stage(out2, r2)
    c2.commit(_manifest(r2), parts2, base)
    v2 = c2.version()
    c2.commit(_manifest(r2), parts2, base)  # retried: its first attempt landed
    assert c2.version() == v2 > v1
    expected = [(i, None, False, dt) for dt in ("d1", "d2") for i in range(30)]
    got = sorted_rows(table_rows(c2))
    assert [r[0] for r in got] == [r[0] for r in expected]
    assert [r[3] for r in got] == [r[3] for r in expected]

    out3 = _out(table, mode="overwrite")  # d1 again, 12 rows
    c3 = committer_for(out3)
    r3 = new_run_id()
    c3.commit(_manifest(r3, 12), _stage(out3, r3, rows=12), c3.prepare()[0])
    rows = sorted_rows(table_rows(c3))
    assert [(r[0], r[3]) for r in rows] == [(i, "d1") for i in range(12)] + [
        (i, "d2") for i in range(30)
    ]

    history = c3.history()
    assert [h["run_id"] for h in history] == [r1, r2, r3]
    assert [h["partition"] for h in history] == [{"dt": "d1"}, {"dt": "d2"}, {"dt": "d1"}]
    assert [h["rows_written"] for h in history] == [30, 30, 12]
    facts = c3.find(None, {"dt": "d2"})
    assert facts["run_id"] == r2 and facts["config_hash"] == "cfg123"
    assert facts["model"]["weights_sha256"] == "ab" * 32
    assert facts["summary"]["scores"]["score"]["mean"] == 0.5
    assert facts["dead_letter"] == out2.dead_letter_path() and facts["write_mode"] == "append"
    assert c3.find(None, None)["run_id"] == r3
    ref = "iceberg:nightly.scores" if table["format"] == "iceberg" else table["path"]
    for spec, run in ((f"@{v2}", r2), ("#dt=d1", r3), (f"@{v1}#dt=d1", r1), ("", r3)):
        assert previous_manifest(_out(table, compare_to=ref + spec))["run_id"] == run, spec
    with pytest.raises(ConfigError, match="no crossenc run at version 99"):
        previous_manifest(_out(table, compare_to=f"{ref}@99"))
    assert committer.prepare()[1]["run_id"] == r3  # the latest run of partition d1


def test_two_runs_of_one_partition_from_the_same_state(table):
    """Two runs of partition d1 that started from the same table version: the first commits,
    the second stops with ConcurrentRunError and its files are removed; a run of another
    partition from that same version commits."""
    out = _out(table)
    committer = committer_for(out)
    base = committer.prepare()[0]
    ra, rb = new_run_id(), new_run_id()
    parts_a, parts_b = _stage(out, ra), _stage(out, rb)
    committer.commit(_manifest(ra), parts_a, base)
    with pytest.raises(ConcurrentRunError, match=ra):
        committer.commit(_manifest(rb), parts_b, base)
    fs = committer.loc.fs
    assert not any(fs.exists(p.file) for p in parts_b)
    other = _out(table, partition_value={"dt": "d2"})
    rc = new_run_id()
    committer_for(other).commit(_manifest(rc), _stage(other, rc), base)
    assert [h["run_id"] for h in committer.history()] == [ra, rc]
    assert len(table_rows(committer)) == 60


def test_runs_of_one_partition_committing_at_the_same_moment(table):
    """Three runs of one partition from the same state commit at once, one thread each:
    exactly one commits (whether the pre-commit check or the table's own optimistic commit
    catches the others), each other stops with ConcurrentRunError, and the table holds the
    winner's rows once."""
    out = _out(table)
    committer = committer_for(out)
    base = committer.prepare()[0]
    staged = {r: _stage(out, r) for r in (new_run_id(), new_run_id(), new_run_id())}
    barrier = threading.Barrier(len(staged))
    outcome: dict[str, str] = {}

    def race(run_id: str) -> None:
        barrier.wait()
        try:
            committer_for(out).commit(_manifest(run_id), staged[run_id], base)
            outcome[run_id] = "committed"
        except ConcurrentRunError:
            outcome[run_id] = "outrun"

    threads = [threading.Thread(target=race, args=(r,)) for r in staged]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome.values()) == ["committed", "outrun", "outrun"]
    (winner,) = [r for r, o in outcome.items() if o == "committed"]
    assert [h["run_id"] for h in committer.history()] == [winner]
    assert len(table_rows(committer)) == 30


# -- whole jobs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parquet_run(ray_local, model, pairs, tmp_path_factory) -> tuple[OutputConfig, str]:
    """Night d1 into a Parquet folder: (its output, its run id)."""
    out = tmp_path_factory.mktemp("tables-parquet") / "out"
    cfg = job_config(
        pairs["night"],
        out,
        model,
        input={"keep": ["pair_id"]},
        output={"partition_by": ["dt"], "partition_value": {"dt": "d1"}},
    )
    return cfg.output, run_job(cfg).run_id


@pytest.fixture(scope="module")
def parquet_night(parquet_run) -> list[tuple]:
    """The Parquet output of night d1: the rows every table must hold for it."""
    return sorted_rows(read_output(parquet_run[0].path))


@pytest.mark.slow
def test_parquet_output_with_a_partition_column_and_its_history(parquet_run, parquet_night):
    """The Parquet folder gets the constant dt column too; its history is its commit record."""
    assert {r[3] for r in parquet_night} == {"d1"} and len(parquet_night) == 120
    (row,) = committer_for(parquet_run[0]).history()
    assert row["run_id"] == parquet_run[1] and row["rows_written"] == 120


def _job(pairs: Path, model: Path, section: dict, **changes):
    return job_config(
        pairs, "unused", model, input={"keep": ["pair_id"]}, output={**section, **changes}
    )


@pytest.mark.slow
@pytest.mark.canary
def test_nightly_job_into_a_table(table, parquet_night, model, pairs, tmp_path, capsys):
    """Night d1 into an empty table holds what the Parquet output holds, row by row, for
    deltalake / pyiceberg and DuckDB alike; locally, night d2 is compared with d1 through the
    table (output.compare_to), d1 is then overwritten by a smaller night, and ``crossenc
    history`` lists the three runs."""
    night1 = run_job(_job(pairs["night"], model, table))
    committer = committer_for(_out(table))
    assert_same_rows(sorted_rows(table_rows(committer)), parquet_night)
    assert committer.find(None, {"dt": "d1"})["run_id"] == night1.run_id
    if table["path"].startswith("s3://"):
        return
    ref = "iceberg:nightly.scores" if table["format"] == "iceberg" else table["path"]
    night2 = run_job(
        _job(
            pairs["night"],
            model,
            table,
            partition_value={"dt": "d2"},
            compare_to=f"{ref}#dt=d1",
        )
    )
    assert night2.summary["drift"]["previous_run_id"] == night1.run_id
    assert not night2.drifted  # the same pairs, the same scores
    redo = run_job(_job(pairs["small"], model, table, mode="overwrite"))
    rows = sorted_rows(table_rows(committer))
    assert [r[3] for r in rows] == ["d1"] * 60 + ["d2"] * 120
    assert_same_rows(rows[60:], [(*r[:3], "d2") for r in parquet_night])

    config = tmp_path / "history.yaml"
    config.write_text(yaml.safe_dump(_job(pairs["night"], model, table).redacted()))
    capsys.readouterr()
    assert main(["history", "--config", str(config), "--json"]) == EXIT_OK
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["run_id"] for h in lines] == [night1.run_id, night2.run_id, redo.run_id]
    assert [h["rows_written"] for h in lines] == [120, 120, 60]
    assert main(["history", "--config", str(config)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "dt=d2" in text and redo.run_id in text


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_killed_before_the_table_commit_then_resumed(
    fmt, parquet_night, model, pairs, tmp_path, monkeypatch
):
    """A run that dies just before its table commit leaves no visible row; output.mode resume
    takes its files over (nothing scored again) and commits them once; a resume after that
    finds the run committed and adds nothing."""
    section = {
        "format": fmt,
        "path": str(tmp_path / "table"),
        "partition_by": ["dt"],
        "partition_value": {"dt": "d1"},
    } | ({"table": "nightly.scores"} if fmt == "iceberg" else {})
    monkeypatch.setenv("CROSSENC_FAILPOINT", "table.before_commit:raise")
    with pytest.raises(FailpointError):
        run_job(_job(pairs["night"], model, section))
    monkeypatch.delenv("CROSSENC_FAILPOINT")
    committer = committer_for(_out(section))
    assert committer.version() == -1  # no table, so no reader sees a row
    assert list((tmp_path / "table").glob("part-*.parquet"))  # the files are there, unlisted
    resumed = run_job(_job(pairs["night"], model, section, mode="resume"))
    assert resumed.rows_scored == 0 and resumed.rows_resumed == 120
    assert_same_rows(sorted_rows(table_rows(committer)), parquet_night)
    assert not list((tmp_path / "table" / "_temporary").glob("*"))

    monkeypatch.setenv("CROSSENC_FAILPOINT", "table.after_commit:raise")
    with pytest.raises(FailpointError):  # committed, then killed before cleaning up
        run_job(_job(pairs["small"], model, section, partition_value={"dt": "d2"}))
    monkeypatch.delenv("CROSSENC_FAILPOINT")
    again = run_job(
        _job(pairs["small"], model, section, partition_value={"dt": "d2"}, mode="resume")
    )
    assert again.already_committed and again.rows_scored == 0
    assert len(table_rows(committer)) == 180  # d2 once
    assert not list((tmp_path / "table" / "_temporary").glob("*"))


@pytest.mark.parametrize(
    ("sets", "names"),
    [
        (["output.format=delta", "output.partition_by=[dt]"], "output.partition_value.dt"),
        (["output.format=iceberg", "output.table=scores"], "output.table"),
        (
            ["output.format=iceberg", "output.table=a.b", "output.path=s3://b/t"],
            "output.catalog.uri",
        ),
        (
            [
                "output.format=delta",
                "output.partition_by=[pair_id]",
                "output.partition_value.pair_id=1",
            ],
            "pair_id",
        ),
        (["output.mode=append"], "output.mode append"),
    ],
)
def test_table_config_errors_name_the_key(sets, names, tmp_path, capsys):
    """A table config that cannot run exits 2 before anything starts, naming the key."""
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"path": str(tmp_path / "in"), "keep": ["pair_id"]},
                "model": {"name": str(tmp_path / "model")},
                "output": {"path": str(tmp_path / "out")},
            }
        )
    )
    args = ["score", "--config", str(config)] + [a for s in sets for a in ("--set", s)]
    assert main(args) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert names in err and "config error" in err


def test_partition_value_from_the_command_line_is_text(tmp_path):
    """--set output.partition_value.dt=2026-11-27 (YAML would read a date) is the text."""
    from crossenc.config import build_config

    cfg = build_config(
        {"input": {"path": "in"}, "output": {"path": "out", "format": "delta"}},
        ["output.partition_by=[dt]", "output.partition_value.dt=2026-11-27"],
    )
    assert cfg.output.partition_value == {"dt": "2026-11-27"}
    assert cfg.output.mode == "append"  # a table's default
