"""Nothing lost, nothing twice: dead letters, bad files, resume refusals, commit bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import s3fs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossenc.cli import EXIT_INPUT, EXIT_PARTIAL, main
from crossenc.config import ConfigError, OutputConfig, StorageConfig
from crossenc.inputs.plan import InputFile
from crossenc.job.accounting import check_accounted, usable_parts
from crossenc.job.run_job import run_job
from crossenc.models.tokenize import ERROR, ROW, SOURCE, TRUNCATED
from crossenc.output.commit import (
    MANIFEST,
    Manifest,
    RunRecord,
    commit,
    read_manifest,
    staged_parts,
    staging_dir,
    write_run_record,
)
from crossenc.output.journal import Journal
from crossenc.output.parts import PartStats, missing_ranges, new_run_id
from crossenc.output.writer import RollingWriter, WriterOptions
from crossenc.storage import resolve
from tests.helpers import job_config, read_output

LONG = " ".join(["berlin population"] * 200)


def _good_rows(n: int, start: int) -> dict[str, list]:
    return {
        "pair_id": list(range(start, start + n)),
        "qid": [i // 5 for i in range(start, start + n)],
        "doc_id": [f"d{i}" for i in range(start, start + n)],
        "query": [f"how many people live in city {i}" for i in range(n)],
        "passage": [f"the city {i} has a large population" for i in range(n)],
    }


@pytest.fixture()
def messy_input(tmp_path: Path) -> Path:
    """Good rows, bad rows, and every kind of bad file, in one folder."""
    root = tmp_path / "in"
    root.mkdir()
    rows = _good_rows(12, 0)
    rows["query"][1] = None  # null
    rows["passage"][2] = ""  # empty
    rows["passage"][3] = "   \t "  # whitespace only
    rows["query"][4] = None
    rows["passage"][4] = None  # both null: reported for the first text column
    rows["passage"][5] = LONG  # longer than max_length: scored, flagged truncated
    pq.write_table(pa.table(rows), root / "a-mixed.parquet")
    pq.write_table(pa.table(_good_rows(8, 100)), root / "b-good.parquet")
    (root / "c-corrupt.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    (root / "d-empty.parquet").write_bytes(b"")
    missing = _good_rows(3, 200)
    del missing["passage"]
    pq.write_table(pa.table(missing), root / "e-missing-column.parquet")
    wrong = _good_rows(3, 300)
    wrong["passage"] = [1, 2, 3]
    pq.write_table(pa.table(wrong), root / "f-int-text.parquet")
    return root


@pytest.mark.slow
def test_bad_rows_and_files_with_skip(ray_local, models, messy_input, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "score",
        "--config",
        str(_write_cfg(tmp_path, messy_input, out, models)),
        "--set",
        "input.on_bad_file=skip",
    ]
    assert main(args) == EXIT_PARTIAL
    err = capsys.readouterr().err
    for name in ("c-corrupt", "d-empty", "e-missing-column", "f-int-text"):
        assert f"{name}.parquet" in err

    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(Path(f["path"]).name for f in manifest["skipped_files"]) == [
        "c-corrupt.parquet",
        "d-empty.parquet",
        "e-missing-column.parquet",
        "f-int-text.parquet",
    ]
    assert manifest["rows_read"] == 20
    assert manifest["rows_written"] + manifest["rows_dead_lettered"] == manifest["rows_read"]
    assert manifest["rows_dead_lettered"] == 4

    dead = pq.read_table(out / "_dead_letter").sort_by("pair_id").to_pylist()
    assert [(r["pair_id"], r["reason"]) for r in dead] == [
        (1, "null_text:query"),
        (2, "empty_text:passage"),
        (3, "empty_text:passage"),
        (4, "null_text:query"),
    ]
    assert set(dead[0]) == {"pair_id", "qid", "doc_id", "reason"}  # keep columns + reason

    good = read_output(out).sort_by("pair_id")
    assert good.column("pair_id").to_pylist() == [0, *range(5, 12), *range(100, 108)]
    truncated = dict(
        zip(good.column("pair_id").to_pylist(), good.column(TRUNCATED).to_pylist(), strict=True)
    )
    assert truncated[5] is True and sum(truncated.values()) == 1
    assert not np.isnan(good.column("score").to_numpy()).any()


def test_bad_file_fails_first_by_default(models, messy_input, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(["score", "--config", str(_write_cfg(tmp_path, messy_input, out, models))])
        == EXIT_INPUT
    )
    err = capsys.readouterr().err
    assert "c-corrupt.parquet: not a readable Parquet file" in err
    assert "3 more bad file(s)" in err
    assert not out.exists()  # failed before scoring anything


def _write_cfg(tmp_path: Path, inp: Path, out: Path, models) -> Path:
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "input": {"path": str(inp), "keep": ["pair_id", "qid", "doc_id"]},
                "model": {"name": str(models[("bert", 1)]), "max_length": 32},
                "output": {"path": str(out)},
            }
        )
    )
    return path


# ---- resume refusals -------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_refuses_a_different_model_or_activation(ray_local, models, pairs_dir, tmp_path):
    out = tmp_path / "out"
    cfg = job_config(pairs_dir, out, models[("bert", 1)])
    run_job(cfg)
    for change in (
        {"model": {"name": str(models[("electra", 1)])}},
        {"model": {"activation": "identity"}},
    ):
        resumed = job_config(
            pairs_dir, out, models[("bert", 1)], output={"mode": "resume"}, **change
        )
        with pytest.raises(ConfigError, match="cannot resume the committed run"):
            run_job(resumed)
    # The same config resumes to "already committed", scoring nothing.
    same = run_job(job_config(pairs_dir, out, models[("bert", 1)], output={"mode": "resume"}))
    assert same.already_committed and same.rows_scored == 0


def test_resume_refuses_an_interrupted_run_with_another_activation(
    ray_local, models, pairs_dir, tmp_path
):
    out = tmp_path / "out"
    first = job_config(pairs_dir, out, models[("bert", 1)])
    write_run_record(
        first.output,
        RunRecord(
            "20260101T000000-dead", first.fingerprint(), {"name": "x", "activation": "sigmoid"}
        ),
    )
    resumed = job_config(
        pairs_dir,
        out,
        models[("bert", 1)],
        output={"mode": "resume"},
        model={"activation": "identity"},
    )
    with pytest.raises(
        ConfigError, match="cannot resume run 20260101T000000-dead: model differs in .*activation"
    ):
        run_job(resumed)


# ---- commit/resume bookkeeping under random crashes ------------------------------------------


def _block(source: str, ids: list[int], first: int) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "pair_id": pa.array(ids, pa.int64()),
            "score": pa.array(np.linspace(0, 1, n), pa.float32()),
            TRUNCATED: pa.array([False] * n),
            SOURCE: pa.array([source] * n),
            ROW: pa.array([i - first for i in ids], pa.int64()),
            ERROR: pa.array([None if i % 7 else "null_text:query" for i in ids], pa.string()),
        }
    )


def _check_bookkeeping(
    out: OutputConfig,
    sizes: list[int],
    block: int,
    crash_after: int,
    torn: bool,
    retried: bool,
    file_rows: int = 5,
    journaled: float = 0.5,
) -> None:
    """Run 1 writes blocks through a rolling writer (files close every ``file_rows`` rows)
    until it crashes: its open file is lost, only the first ``journaled`` share of its closed
    files reached the journal (the rest are orphans), maybe a journal object is torn, maybe a
    block was sent twice. The resume takes over what run 1 journaled, scores the missing row
    ranges, commits; every input row must then be committed exactly once, in the manifest and
    in a plain listing of the folder."""
    loc = resolve(out.path, out.storage)
    files = {f"in/file-{i}.parquet": n for i, n in enumerate(sizes)}
    inputs = tuple(InputFile(name, n, (n,)) for name, n in files.items())
    start, ids = 0, {}
    for name, n in files.items():
        ids[name] = list(range(start, start + n))
        start += n
    blocks = [
        (name, ids[name][i : i + block]) for name in files for i in range(0, len(ids[name]), block)
    ]
    crash_after = min(crash_after, len(blocks))
    options = WriterOptions(max_rows=file_rows)
    record = RunRecord(new_run_id(), "cfg", {"name": "m"})
    write_run_record(out, record)
    writer = RollingWriter(out, record.run_id, "w0", options)
    closed: list[PartStats] = []
    for name, chunk in blocks[:crash_after]:
        closed += writer.append(_block(name, chunk, ids[name][0]))
    if retried and crash_after:
        name, chunk = blocks[crash_after - 1]  # a retried task whose first try landed
        closed += writer.append(_block(name, chunk, ids[name][0]))
    journal = Journal(loc, staging_dir(loc, record.run_id))
    journal.add(closed[: int(len(closed) * journaled)])
    journal.flush()  # the driver dies here: later closed files are orphans, the open one lost
    if torn:
        loc.fs.makedirs(f"{staging_dir(loc, record.run_id)}/journal", exist_ok=True)
        torn_path = f"{staging_dir(loc, record.run_id)}/journal/000099.parquet"
        loc.fs.pipe_file(torn_path, b"PAR1 cut off")

    resumed = RunRecord(new_run_id(), "cfg", {"name": "m"})
    kept = usable_parts(staged_parts(out, resumed), inputs)
    write_run_record(out, resumed)
    todo = {
        name: missing_ranges([r for p in kept if p.input_file == name for r in p.row_ranges()], n)
        for name, n in files.items()
    }
    second = RollingWriter(out, resumed.run_id, "w0", options)
    parts = list(kept)
    for name, ranges in todo.items():
        for lo, hi in ranges:
            chunk = ids[name][lo:hi]
            parts += second.append(_block(name, chunk, ids[name][0]))
    parts += second.flush()
    check_accounted(list(inputs), parts, resumed.run_id)
    manifest = Manifest(resumed.run_id, [], [], [], [], start, 0, 0, 0, {}, "cfg", {}, "test")
    commit(out, manifest, parts, 0)

    committed = read_manifest(out)
    assert committed is not None and committed["run_id"] == resumed.run_id
    assert not loc.fs.exists(loc.join("_temporary"))
    seen: list[int] = []
    for f in committed["files"]:
        seen += pq.read_table(loc.join(f["path"]), filesystem=loc.arrow_fs)["pair_id"].to_pylist()
    for f in committed["dead_letter_files"]:
        seen += pq.read_table(f["path"], filesystem=loc.arrow_fs)["pair_id"].to_pylist()
    assert sorted(seen) == list(range(start))  # every row, exactly once
    plain: list[int] = []
    for folder in (loc, resolve(out.dead_letter_path(), out.storage)):
        listed = pads.dataset(folder.path, filesystem=folder.arrow_fs, format="parquet")
        if "pair_id" in listed.schema.names:
            plain += listed.to_table()["pair_id"].to_pylist()
    assert sorted(plain) == list(range(start))  # orphans and lost files removed at commit


CRASHES = dict(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    block=st.integers(1, 4),
    crash_after=st.integers(0, 12),
    torn=st.booleans(),
    retried=st.booleans(),
    file_rows=st.integers(1, 12),
    journaled=st.sampled_from([0.0, 0.5, 1.0]),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(**CRASHES)
def test_bookkeeping_random_crashes_local(
    tmp_path_factory, sizes, block, crash_after, torn, retried, file_rows, journaled
):
    out = OutputConfig(path=str(tmp_path_factory.mktemp("out")))
    _check_bookkeeping(out, sizes, block, crash_after, torn, retried, file_rows, journaled)


@pytest.mark.slow
@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(**CRASHES)
def test_bookkeeping_random_crashes_s3(
    s3_server, sizes, block, crash_after, torn, retried, file_rows, journaled
):
    import uuid

    storage = StorageConfig(endpoint_url=s3_server, key="testing", secret="testing")
    fs = s3fs.S3FileSystem(**storage.s3fs_kwargs())
    bucket = f"book-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    try:
        _check_bookkeeping(
            OutputConfig(path=f"s3://{bucket}/out", storage=storage),
            sizes,
            block,
            crash_after,
            torn,
            retried,
            file_rows,
            journaled,
        )
    finally:
        fs.rm(bucket, recursive=True)


# ---- footers read while the run scores -------------------------------------------------------


@pytest.fixture()
def wide_input(tmp_path: Path) -> Path:
    """Six files, bad ones in the middle: with input.inspect_files=2 only the first and the
    last footers are read before the start."""
    root = tmp_path / "wide"
    root.mkdir()
    pq.write_table(pa.table(_good_rows(7, 0)), root / "a.parquet")
    (root / "b-corrupt.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    missing = _good_rows(3, 100)
    del missing["passage"]
    pq.write_table(pa.table(missing), root / "c-missing-column.parquet")
    pq.write_table(pa.table(_good_rows(9, 200)), root / "d.parquet")
    wrong = _good_rows(3, 300)
    wrong["qid"] = [str(q) for q in wrong["qid"]]  # a kept column of another type
    pq.write_table(pa.table(wrong), root / "e-kept-type.parquet")
    pq.write_table(pa.table(_good_rows(5, 400)), root / "f.parquet")
    return root


@pytest.mark.slow
def test_footers_past_inspect_files_are_checked_while_the_run_scores(
    ray_local, models, wide_input, tmp_path, capsys
):
    cfg = _write_cfg(tmp_path, wide_input, tmp_path / "out", models)
    sets = ["--set", "input.inspect_files=2", "--set", "input.on_bad_file=skip"]
    assert main(["plan", "--config", str(cfg), "--json", *sets]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["files"] == 6 and planned["rows"] > 0  # rows estimated from 2 footers
    assert main(["score", "--config", str(cfg), *sets]) == EXIT_PARTIAL
    err = capsys.readouterr().err
    for name in ("b-corrupt", "c-missing-column", "e-kept-type"):
        assert f"{name}.parquet" in err
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert {Path(f["path"]).name: f["rows"] for f in manifest["input_files"]} == {
        "a.parquet": 7,
        "d.parquet": 9,
        "f.parquet": 5,
    }
    assert len(manifest["skipped_files"]) == 3 and manifest["rows_read"] == 21
    got = read_output(tmp_path / "out")["pair_id"].to_pylist()
    assert sorted(got) == [*range(7), *range(200, 209), *range(400, 405)]

    out2 = tmp_path / "out2"
    cfg2 = _write_cfg(tmp_path, wide_input, out2, models)
    assert main(["score", "--config", str(cfg2), "--set", "input.inspect_files=2"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "input error" in err and "b-corrupt.parquet" in err
    assert not (out2 / "_SUCCESS").exists() and not (out2 / "_commits").exists()
