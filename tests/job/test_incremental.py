"""output.incremental: a second night whose input is mostly the first's pairs scores only the
new ones; the rest take the first night's scores, on a Parquet folder, Delta and Iceberg
tables, local and on the moto S3 server, read back by the table libraries and by DuckDB's own
Delta / Iceberg readers (tests.helpers.table_rows)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from crossenc.config import ConfigError
from crossenc.engine.replica import ScorerReplica
from crossenc.inputs.read import reuse_block
from crossenc.inputs.reuse import PAIR_HASH, REUSE_SCORES, Reuse, pair_hashes
from crossenc.job import incremental
from crossenc.job.incremental import match_partition
from crossenc.job.result import summary_lines
from crossenc.job.run_job import run_job
from crossenc.models.describe import describe_model, model_fingerprint
from crossenc.models.several import lone
from crossenc.models.tokenize import ROW, SOURCE, TRUNCATED
from crossenc.output.commit import read_manifest, staged_runs, staging_dir
from crossenc.output.committers import committer_for
from crossenc.output.journal import Journal, read_journal
from crossenc.storage import resolve
from crossenc.testing import NLI_LABELS, build_tiny_model, write_pairs, write_parquet_files
from crossenc.testing.failpoints import FailpointError
from tests.helpers import job_config, read_output, table_output, table_rows

NIGHT = 120  # night 1's pairs; night 2: 108 of them, 12 new, 2 without a passage
REPEATED = 108


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny BERT for the module."""
    return build_tiny_model(tmp_path_factory.mktemp("inc-model") / "bert", "bert", 1, seed=3)


def _night2(night1: pa.Table, new: pa.Table, bad: int, folder: Path, files: int) -> None:
    """90% of night 1's pairs, the new ones and ``bad`` rows with no passage, shuffled."""
    rng = np.random.default_rng(7)
    kept = night1.take(np.sort(rng.choice(night1.num_rows, REPEATED, replace=False)))
    new = new.set_column(0, "pair_id", pc.add(new.column("pair_id"), 1000))
    broken = new.slice(0, bad)
    broken = broken.set_column(4, "passage", pa.nulls(bad, pa.string()))
    broken = broken.set_column(0, "pair_id", pc.add(broken.column("pair_id"), 1000))
    table = pa.concat_tables([kept, new.cast(kept.schema), broken.cast(kept.schema)])
    write_parquet_files(table.take(rng.permutation(table.num_rows)), folder, files)


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Night 1 (120 pairs, 3 files); night 2 (108 of them, 12 new, 2 bad rows; 4 files);
    night 3 (night 2's pairs and 12 more new ones)."""
    root = tmp_path_factory.mktemp("inc-pairs")
    write_pairs(root / "night1", rows=NIGHT, files=3, seed=4)
    write_pairs(root / "new", rows=24, files=1, seed=9)
    night1 = pq.read_table(root / "night1")
    new = pq.read_table(root / "new").cast(night1.schema)
    _night2(night1, new.slice(0, 12), 2, root / "night2", 4)
    night2 = pq.read_table(root / "night2")
    more = new.slice(12).set_column(0, "pair_id", pc.add(new.slice(12).column("pair_id"), 2000))
    (root / "night3").mkdir()
    pq.write_table(
        pa.concat_tables([night2, more.cast(night2.schema)]), root / "night3" / "p.parquet"
    )
    return {k: root / k for k in ("night1", "night2", "night3")}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory, nights, model, ray_local) -> pa.Table:
    """Night 2 scored from scratch (no incremental), by pair_id."""
    out = tmp_path_factory.mktemp("inc-scratch") / "out"
    run_job(job_config(nights["night2"], out, model, input={"keep": ["pair_id"]}))
    return read_output(out).sort_by("pair_id")


def _scores(table: pa.Table) -> dict[int, float]:
    return dict(zip(table["pair_id"].to_pylist(), table["score"].to_pylist(), strict=True))


def _config(nights, night: str, out: Path | str, model: Path, sections=None, **output):
    """An incremental run of one night; ``sections``: other config sections."""
    return job_config(
        nights[night],
        out,
        model,
        input={"keep": ["pair_id"]},
        output={"path": str(out), "incremental": True, **output},
        **(sections or {}),
    )


# -- the hash and the key ----------------------------------------------------------------------


def test_pair_hash_is_blake2b_128_of_the_length_prefixed_texts():
    a = pa.array(["what is ray?", "ab", "a", None, "é"])
    b = pa.array(["Ray is a framework.", "c", "bc", "x", "ß"])
    got = pair_hashes(a, b).to_pylist()
    assert got[0].hex() == "d5bf036ff4a7d1595010dbb8155c9cde"  # pinned: stored hashes stay valid
    for (x, y), digest in zip(
        [("ab", "c"), ("a", "bc"), ("é", "ß")], got[1:3] + got[4:], strict=True
    ):
        xb, yb = x.encode(), y.encode()
        layout = len(xb).to_bytes(8, "little") + xb + len(yb).to_bytes(8, "little") + yb
        assert digest == hashlib.blake2b(layout, digest_size=16).digest()
    assert got[1] != got[2]  # the length prefix tells ("ab", "c") from ("a", "bc")
    assert got[3] is None  # a row with no text has no hash: it is dead-lettered, never reused
    assert pair_hashes(a, b).equals(pair_hashes(a, b))


def test_scoring_key_changes_with_what_changes_scores(nights, model):
    cfg = job_config(nights["night1"], "/tmp/x", model)
    fingerprint = model_fingerprint(cfg.model, describe_model(cfg.model))

    def key(**model_settings) -> str:
        changed = job_config(nights["night1"], "/tmp/x", model, model=model_settings)
        return changed.scoring_key(fingerprint)

    base = key()
    changed = {
        key(max_length=64),
        key(activation="sigmoid"),
        key(truncation="only_second"),
        key(dtype="bfloat16"),
        key(revision="v2"),
        cfg.scoring_key({**fingerprint, "weights_sha256": "0" * 64}),  # other weights
    }
    assert base not in changed and len(changed) == 6
    # what changes speed, or where rows go, not scores: the same key
    same = job_config(
        nights["night1"], "/tmp/y", model, runtime={"batch_tokens": 1024, "replicas": 2}
    )
    assert same.scoring_key(fingerprint) == base


def test_match_takes_the_latest_run_s_scores():
    h = [bytes([i]) * 16 for i in range(4)]
    scores = pa.FixedSizeListArray.from_arrays(pa.array([0.1, 0.2, 0.3], pa.float32()), 1)
    rows = pa.table(
        {
            "_side": pa.array([0, 0, 0, 1, 1, 1], pa.int8()),
            PAIR_HASH: pa.array([h[0], h[1], h[2], h[0], h[0], h[1]], pa.binary()),
            SOURCE: ["f", "f", "g", None, None, None],
            ROW: pa.array([0, 1, 0, None, None, None], pa.int64()),
            "_order": pa.array([None, None, None, 0, 1, 0], pa.int32()),
            REUSE_SCORES: pa.concat_arrays(
                [pa.nulls(3, scores.type), scores]  # run 0: h0 0.1, run 1: h0 0.2; h1 0.3
            ),
            TRUNCATED: [None, None, None, False, True, False],
        }
    )
    out = match_partition(rows).sort_by([(SOURCE, "ascending"), (ROW, "ascending")])
    assert out[SOURCE].to_pylist() == ["f", "f"]  # g's pair (h2) was never scored
    assert out[ROW].to_pylist() == [0, 1]
    assert [s[0] for s in out[REUSE_SCORES].to_pylist()] == pytest.approx([0.2, 0.3])
    assert out[TRUNCATED].to_pylist() == [True, False]  # with the latest run's truncated


# -- whole runs ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("where", ["driver", "shuffle"])
def test_second_night_on_a_parquet_folder(
    tmp_path, nights, model, scratch, ray_local, where, monkeypatch, caplog
):
    """The match in the driver (a small night) and on Ray Data's shuffles (a night of more
    than one partition's rows: here 50) give the same rows."""
    if where == "shuffle":
        monkeypatch.setattr(incremental, "MATCH_ROWS_PER_PARTITION", 50)
    out = tmp_path / "out"
    first = run_job(_config(nights, "night1", out, model, mode="overwrite"))
    assert first.rows_reused == 0 and first.summary["rows"]["new"] == NIGHT
    night1 = read_output(out)
    with caplog.at_level(logging.INFO, logger="crossenc.job.incremental"):
        second = run_job(_config(nights, "night2", out, model, mode="overwrite"))
    said = "in the driver" if where == "driver" else "over 5 partitions"  # (122 + 120) // 50 + 1
    assert any(said in r.getMessage() for r in caplog.records)
    rows = second.summary["rows"]
    assert (rows["read"], rows["reused"], rows["new"]) == (122, REPEATED, 14)
    assert rows["written"] == 120 and rows["dead_lettered"] == 2
    # scored: what the model scored (and the 2 rows without a passage), not the copied rows
    assert second.rows_scored == rows["scored"] == 14 and second.rows_resumed == 0
    assert sum(r["rows"] for r in second.summary["replicas"]) == 12
    assert second.summary["rows_per_second"] == pytest.approx(14 / second.seconds, abs=0.1)
    assert any("rows new / reused from earlier runs" in line for line in summary_lines(second))
    manifest = read_manifest(job_config(nights["night2"], out, model).output)
    assert manifest["rows_reused"] == REPEATED and len(manifest["scoring_key"]) == 32
    night2 = read_output(out).sort_by("pair_id")
    # every row carries the hash of its own texts
    texts = pq.read_table(nights["night2"]).sort_by("pair_id")
    texts = texts.filter(pc.is_valid(texts["passage"]))
    assert night2[PAIR_HASH].combine_chunks().equals(pair_hashes(texts["query"], texts["passage"]))
    # reused rows: night 1's scores, bit for bit; every row: scratch's, to float32 noise
    before, now = _scores(night1), _scores(night2)
    repeated = [i for i in now if i in before]
    assert len(repeated) == REPEATED and all(now[i] == before[i] for i in repeated)
    assert night2["pair_id"].equals(scratch["pair_id"])
    np.testing.assert_allclose(night2["score"].to_numpy(), scratch["score"].to_numpy(), atol=1e-5)
    assert night2[TRUNCATED].equals(scratch[TRUNCATED])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "reused"),
    [({}, REPEATED), ({"max_length": 64}, 0)],  # other keys: test_scoring_key_changes...
    ids=["same", "max_length"],
)
def test_reuse_from_another_folder_needs_the_same_scoring_key(
    tmp_path, nights, model, change, reused, ray_local, caplog
):
    first = tmp_path / "night1"
    run_job(_config(nights, "night1", first, model))
    cfg = _config(
        nights, "night2", tmp_path / "night2", model, {"model": change}, reuse_from=[str(first)]
    )
    with caplog.at_level(logging.WARNING, logger="crossenc"):
        result = run_job(cfg)
    assert result.rows_reused == reused
    assert result.summary["rows"]["new"] == 122 - reused
    if not reused:
        assert "another scoring key" in caplog.text


def test_reuse_from_must_name_an_earlier_run(tmp_path, nights, model, ray_local):
    (tmp_path / "empty").mkdir()
    cfg = _config(nights, "night2", tmp_path / "out", model, reuse_from=[str(tmp_path / "empty")])
    with pytest.raises(ConfigError, match=r"output.reuse_from .*empty holds no committed crossenc"):
        run_job(cfg)


def test_incremental_settings_are_checked(nights, model):
    with pytest.raises(ConfigError, match="set output.incremental"):
        job_config(nights["night1"], "/tmp/o", model, output={"reuse_from": ["/tmp/n1"]})
    with pytest.raises(ConfigError, match="a Parquet folder holds one run"):
        job_config(nights["night1"], "/tmp/o", model, output={"incremental": "skip"})


def _table_rows(out: dict, dt: str) -> pa.Table:
    committer = committer_for(job_config("/tmp/i", "/tmp/o", "/tmp/m", output=out).output)
    rows = table_rows(committer)
    return rows.filter(pc.equal(rows["dt"], dt)).sort_by("pair_id")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "mode"),
    [
        ("delta-local", "skip"),
        ("iceberg-local", True),
        ("delta-s3", True),
        ("iceberg-s3", "skip"),
    ],
)
def test_nights_on_a_table(tmp_path, nights, model, scratch, kind, mode, s3_server_process):
    with table_output(kind, tmp_path, s3_server_process) as out:
        out["incremental"] = mode
        run_job(_config(nights, "night1", out["path"], model, **out))
        night1 = _table_rows(out, "d1")
        out["partition_value"] = {"dt": "d2"}
        second = run_job(_config(nights, "night2", out["path"], model, **out))
        assert second.rows_reused == REPEATED and second.summary["rows"]["new"] == 14
        night2 = _table_rows(out, "d2")
        want = (
            scratch
            if mode is True
            else scratch.filter(pc.invert(pc.is_in(scratch["pair_id"], night1["pair_id"])))
        )
        assert night2["pair_id"].equals(want["pair_id"])  # skip: only the 12 new pairs
        assert second.rows_written == night2.num_rows == (120 if mode is True else 12)
        np.testing.assert_allclose(night2["score"].to_numpy(), want["score"].to_numpy(), atol=1e-5)
        before = _scores(night1)
        assert all(before[i] == s for i, s in _scores(night2).items() if i in before)
        committer = committer_for(job_config("/tmp/i", "/tmp/o", "/tmp/m", output=out).output)
        history = committer.history()
        meta = json.loads(json.dumps(history[-1]))
        assert meta["rows_written"] == night2.num_rows
        if mode == "skip" and kind == "delta-local":
            # night 3: night 2's pairs and 12 new: skip reuses every earlier run (d1 and d2)
            out["partition_value"] = {"dt": "d3"}
            third = run_job(_config(nights, "night3", out["path"], model, **out))
            assert third.rows_reused == 120 and third.rows_written == 12


@pytest.mark.slow
def test_classify_reuses_every_label_score(tmp_path, nights, model, ray_local):
    nli = build_tiny_model(tmp_path / "nli", "bert", 3, seed=5, labels=NLI_LABELS)
    out = tmp_path / "out"
    task = {"task": "classify"}
    run_job(_config(nights, "night1", out, nli, task, mode="overwrite"))
    night1 = read_output(out)
    second = run_job(_config(nights, "night2", out, nli, task, mode="overwrite"))
    assert second.rows_reused == REPEATED
    night2 = read_output(out)
    names = [f"score_{label}" for label in NLI_LABELS]
    before = {r["pair_id"]: r for r in night1.select(["pair_id", "label", *names]).to_pylist()}
    now = night2.select(["pair_id", "label", *names]).to_pylist()
    repeated = [r for r in now if r["pair_id"] in before]
    assert len(repeated) == REPEATED and all(r == before[r["pair_id"]] for r in repeated)
    for r in now:  # the label follows from the (copied) scores
        assert r["label"] == max(NLI_LABELS, key=lambda name: r[f"score_{name}"])
    assert duckdb.sql(f"SELECT count(*) FROM '{out}/*.parquet'").fetchall()[0][0] == 120


@pytest.mark.slow
def test_killed_incremental_night_resumes_exactly_once(
    tmp_path, nights, model, scratch, monkeypatch
):
    """Night 2 on a Delta table dies before its commit, and its journal is cut back to one
    output file (a driver killed mid-run: files closed after its last journal write are not
    known to a resume). output.mode resume takes that file over, matches and scores the rest
    again, and commits every row once: repeated pairs with night 1's scores bit for bit."""
    out = {
        "format": "delta",
        "path": str(tmp_path / "table"),
        "partition_by": ["dt"],
        "partition_value": {"dt": "d1"},
        "files": {"max_rows": 30},  # several output files per writer
    }
    run_job(_config(nights, "night1", out["path"], model, **out))
    night1 = _table_rows(out, "d1")
    out["partition_value"] = {"dt": "d2"}
    monkeypatch.setenv("CROSSENC_FAILPOINT", "table.before_commit:raise")
    with pytest.raises(FailpointError):
        run_job(_config(nights, "night2", out["path"], model, **out))
    monkeypatch.delenv("CROSSENC_FAILPOINT")
    cfg = _config(nights, "night2", out["path"], model, **out)
    (run,) = staged_runs(cfg.output)
    loc = resolve(cfg.output.path, cfg.output.storage)
    staging = staging_dir(loc, run)
    parts = read_journal(loc, staging)
    first = sorted({p.file for p in parts if p.file})[0]
    kept = [p for p in parts if p.file == first]
    assert 0 < sum(p.accounted for p in kept) < 122
    for f in (tmp_path / "table" / "_temporary" / run / "journal").glob("*.parquet"):
        f.unlink()
    journal = Journal(loc, staging)
    journal.add(kept)
    journal.flush()

    resumed = run_job(_config(nights, "night2", out["path"], model, mode="resume", **out))
    rows = resumed.summary["rows"]
    taken = sum(p.accounted for p in kept)
    assert rows["resumed"] == resumed.rows_resumed == taken
    # the rest was matched again: every row is resumed, reused now, or scored now
    reused_before = sum(p.reused_rows for p in kept)
    assert rows["scored"] + (rows["reused"] - reused_before) + taken == 122
    assert rows["reused"] == resumed.rows_reused == REPEATED
    night2 = _table_rows(out, "d2")  # the files of the cut parts were removed at the commit
    assert night2["pair_id"].equals(scratch["pair_id"])
    np.testing.assert_allclose(night2["score"].to_numpy(), scratch["score"].to_numpy(), atol=1e-5)
    before = _scores(night1)
    repeated = [(before[i], s) for i, s in _scores(night2).items() if i in before]
    assert len(repeated) == REPEATED and all(a == b for a, b in repeated)
    assert not list((tmp_path / "table" / "_temporary").glob("*"))


@pytest.mark.slow
def test_a_night_of_pairs_scored_before_loads_no_model(tmp_path, nights, model, ray_local, caplog):
    out = tmp_path / "out"
    run_job(_config(nights, "night1", out, model, mode="overwrite"))
    night1 = read_output(out)
    with caplog.at_level(logging.INFO, logger="crossenc.job"):
        again = run_job(_config(nights, "night1", out, model, mode="overwrite"))
    assert "every row to score was scored before: no model is loaded" in caplog.text
    rows = again.summary["rows"]
    assert (rows["reused"], rows["new"], again.rows_scored) == (NIGHT, 0, 0)
    assert again.summary["replicas"] == []  # no replica scored a row
    assert _scores(read_output(out)) == _scores(night1)


def test_a_replica_started_without_its_model_loads_it_for_a_row_to_score(nights, model, ray_local):
    cfg = _config(nights, "night1", "/tmp/unused", model)
    info = describe_model(cfg.model)
    block = pq.read_table(nights["night1"]).slice(0, 8)
    block = block.append_column(SOURCE, pa.array(["f.parquet"] * 8))
    block = block.append_column(ROW, pa.array(np.arange(8), pa.int64()))
    scores = np.linspace(0.1, 0.8, 8, dtype=np.float32)[:, None]

    def reusing(rows: np.ndarray) -> Reuse:
        return Reuse(rows, scores[rows], np.zeros(len(rows), bool), None)

    replica = ScorerReplica(cfg, info, load=False)
    copied = replica(reuse_block(block, cfg, lone(cfg, info), {"": reusing(np.arange(8))}))
    assert replica.engine is None  # every row reused: nothing loaded
    assert copied["score"].to_pylist() == scores.ravel().tolist()
    mixed = replica(reuse_block(block, cfg, lone(cfg, info), {"": reusing(np.arange(7))}))
    assert replica.engine is not None  # row 7 needed the model
    assert mixed["score"].to_pylist()[:7] == scores.ravel()[:7].tolist()
    assert 0 < mixed["score"][7].as_py() < 1 and mixed["score"][7].as_py() not in scores
