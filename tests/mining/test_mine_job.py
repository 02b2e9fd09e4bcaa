"""task mine as a job: every candidate scored and written, each input file's queries mined by
the writer that writes it, the mined rows in ``_mined/`` as the twins of the committed data
files, the counts in the summary; several teachers averaged; a log whose queries span files
mined after a shuffle (or, small, in one writer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crossenc.config import ConfigError
from crossenc.mining.negatives import FOLDER, mine_rows, mine_spec
from crossenc.output.commit import remove_stale_twins
from crossenc.output.parts import part_file_name
from crossenc.storage import resolve
from crossenc.testing import write_pairs
from tests.helpers import (
    duckdb_readers,
    job_config,
    read_input,
    read_output,
    several_config,
    spread_over_files,
)

MINE = {"num_negatives": 2, "range_max": 6, "retriever_score": "retriever", "relative_margin": 0.1}


def candidate_log(
    folder: Path, rows: int, seed: int, files: int = 3, empty: int | None = None
) -> pa.Table:
    """write_pairs' rows as a candidate log: two positives in most queries, none in query 3, a
    retriever score; each query's rows in one of ``files`` files (sorted by query); row
    ``empty``'s passage left empty (a dead letter)."""
    write_pairs(folder / "raw", rows, files=1, seed=seed, queries_per_group=10)
    table = read_input(folder / "raw").sort_by([("qid", "ascending"), ("doc_id", "ascending")])
    rng = np.random.default_rng(seed)
    qid = table.column("qid").to_numpy()
    first = np.r_[True, qid[1:] != qid[:-1]]
    rank = np.arange(len(qid)) - np.maximum.accumulate(np.where(first, np.arange(len(qid)), 0))
    positive = (rank < 2) & (qid != 3)
    table = table.append_column("positive", pa.array(positive))
    table = table.append_column("retriever", pa.array(rng.random(len(qid))))
    if empty is not None:
        passages = table.column("passage").to_pylist()
        passages[empty] = ""
        table = table.set_column(
            table.schema.get_field_index("passage"), "passage", pa.array(passages)
        )
    queries = np.unique(qid)
    for i, chunk in enumerate(np.array_split(queries, files)):
        part = table.filter(pa.compute.is_in(table.column("qid"), pa.array(chunk)))
        (folder / "in").mkdir(exist_ok=True)
        pq.write_table(part, folder / "in" / f"part-{i}.parquet")
    return table


def _rows(table: pa.Table) -> list[tuple]:
    return sorted(tuple(r.values()) for r in table.to_pylist())


@pytest.mark.slow
def test_a_mined_log_matches_mining_its_scored_rows(ray_local, models, tmp_path):
    candidate_log(tmp_path, 240, seed=5, empty=57)  # a candidate of query 5: a dead letter
    mine = {**MINE, "group_by": "qid", "output_scores": True}
    cfg = mine_config(
        models,
        tmp_path / "in",
        tmp_path / "out",
        mine,
        input={"keep": ["doc_id"]},
        output={"report": str(tmp_path / "report.html")},
    )
    assert cfg.model.activation == "identity"  # a teacher's raw logits by default
    result = run(cfg)
    scored = read_output(tmp_path / "out")
    assert scored.num_rows == 239 and scored.column("score").null_count == 0
    (dead,) = read_output(tmp_path / "out" / "_dead_letter").to_pylist()
    assert dead["qid"] == 5 and "passage" in dead["reason"]
    assert {"qid", "positive", "retriever"} <= set(scored.column_names)

    mining = result.summary["mining"]
    twins = sorted((tmp_path / "out" / FOLDER).glob("*.parquet"))
    data = sorted(p.name for p in (tmp_path / "out").glob("*.parquet"))
    assert [p.name for p in twins] == data  # one twin per committed data file
    assert sorted(Path(f).name for f in mining["files"]) == data
    mined = pq.read_table(twins)
    want, counts = mine_rows(scored, mine_spec(cfg))  # every query whole in the output
    assert _rows(mined) == _rows(want)
    assert mined.column_names == ["query", "passage", "negative", "scores"]
    assert mining["queries"] == counts.queries == 24
    assert mining["without_positive"] == counts.without_positive == 1
    assert mining["rows"] == mined.num_rows == counts.rows > 0
    assert mining["dropped"] == counts.dropped and counts.dropped["relative_margin"] > 0
    assert mining["short"] == counts.short
    page = (tmp_path / "report.html").read_text()
    assert "Training data (task mine)" in page and "queries without a positive" in page

    duck = duckdb_readers()  # the training set, read as a user's reader reads a folder
    (n,) = duck.sql(f"select count(*) from '{tmp_path / 'out' / FOLDER}/*.parquet'").fetchone()
    assert n == mined.num_rows


@pytest.mark.slow
def test_several_teachers_mine_by_their_mean_score(ray_local, models, tmp_path):
    candidate_log(tmp_path, 120, seed=6, files=2)
    paths = {"bert": models[("bert", 1)], "electra": models[("electra", 1)]}
    mine = {**MINE, "group_by": "qid", "output_format": "labeled-pair", "output_scores": True}
    cfg = several_config(tmp_path / "in", tmp_path / "out", paths, task="mine", mine=mine)
    run(cfg)
    scored = read_output(tmp_path / "out")
    mean = (scored.column("score_bert").to_numpy() + scored.column("score_electra").to_numpy()) / 2
    mined = pq.read_table(sorted((tmp_path / "out" / FOLDER).glob("*.parquet")))
    by_pair = dict(
        zip(
            zip(
                scored.column("query").to_pylist(),
                scored.column("passage").to_pylist(),
                strict=True,
            ),
            mean,
            strict=True,
        )
    )
    for row in mined.to_pylist():
        assert row["score"] == pytest.approx(by_pair[(row["query"], row["passage"])], abs=1e-6)


def _mixed_log(tmp_path: Path, rows: int, seed: int) -> None:
    """A candidate log in two files, every query's rows in both (every other row)."""
    spread_over_files(candidate_log(tmp_path, rows, seed=seed, files=1), tmp_path / "mixed")


def mine_config(models: Any, folder: Path, out: Path, mine: dict, **sections: Any) -> Any:
    """A task mine job over ``folder`` with the seeded tiny BERT as teacher."""
    return job_config(folder, out, models[("bert", 1)], task="mine", mine=mine, **sections)


@pytest.mark.slow
@pytest.mark.parametrize("writers", [1, 2])  # 1: the whole input in one writer; 2: a shuffle
def test_a_log_whose_queries_span_files_is_mined_whole(ray_local, models, tmp_path, writers):
    from crossenc.inputs.plan import plan_job

    _mixed_log(tmp_path, 120, seed=7)
    mine = {**MINE, "group_by": "qid", "output_format": "n-tuple", "output_scores": True}
    cfg = mine_config(
        models, tmp_path / "mixed", tmp_path / "out", mine, runtime={"writers": writers}
    )
    assert not plan_job(cfg).mine_within_files
    result = run(cfg)
    scored = read_output(tmp_path / "out")
    assert scored.num_rows == 120
    twins = sorted((tmp_path / "out" / FOLDER).glob("*.parquet"))
    assert [p.name for p in twins] == sorted(p.name for p in (tmp_path / "out").glob("*.parquet"))
    assert len(twins) == writers  # (the shuffle: each writer's queries in its own file)
    mined = pq.read_table(twins)
    want, counts = mine_rows(scored, mine_spec(cfg))  # each query mined among all its rows
    assert _rows(mined) == _rows(want) and mined.num_rows == counts.rows > 0
    assert result.summary["mining"]["queries"] == counts.queries == 12
    assert result.summary["mining"]["dropped"] == counts.dropped


def test_a_shuffled_mining_cannot_resume_and_a_bad_positive_is_refused(models, tmp_path):
    from crossenc.inputs.plan import plan_job

    _mixed_log(tmp_path, 60, seed=7)
    cfg = mine_config(models, tmp_path / "mixed", tmp_path / "out", MINE, output={"mode": "resume"})
    with pytest.raises(ConfigError, match="resume is not available for a mine whose queries"):
        plan_job(cfg)
    bad = mine_config(models, tmp_path / "in", tmp_path / "out", {**MINE, "positive": "passage"})
    with pytest.raises(Exception, match="mine.positive needs bool or integer"):
        plan_job(bad)


def test_twins_of_files_no_commit_kept_are_removed(tmp_path):
    loc = resolve(str(tmp_path), None)
    kept = part_file_name("20261207T000002-aaaaaaaa", "w0", 0)
    killed = part_file_name("20261207T000002-aaaaaaaa", "w1", 0)
    later = part_file_name("20261207T000009-bbbbbbbb", "w0", 0)  # a run that may still commit
    for name in (kept, killed, later):
        loc.write_table(f"{FOLDER}/{name}", pa.table({"a": [1]}))
    remove_stale_twins(loc, {str(tmp_path / kept)}, "20261207T000002-aaaaaaaa")
    assert sorted(p.name for p in (tmp_path / FOLDER).iterdir()) == sorted([kept, later])


def run(cfg):
    from crossenc.job.run_job import run_job

    return run_job(cfg)


@pytest.mark.slow
def test_a_mine_resumes_and_a_later_night_reuses_the_teachers_scores(
    ray_local, models, tmp_path, monkeypatch
):
    from crossenc.testing.failpoints import FailpointError

    candidate_log(tmp_path, 120, seed=8, files=2)
    mine = {**MINE, "group_by": "qid", "output_format": "labeled-list", "output_scores": True}
    cfg = mine_config(models, tmp_path / "in", tmp_path / "out", mine, output={"incremental": True})
    monkeypatch.setenv("CROSSENC_FAILPOINT", "commit.before_record:raise")
    with pytest.raises(FailpointError):
        run(cfg)  # killed before its commit: its files staged, none committed
    monkeypatch.delenv("CROSSENC_FAILPOINT")
    resumed = run(
        cfg.model_copy(update={"output": cfg.output.model_copy(update={"mode": "resume"})})
    )
    assert resumed.rows_resumed == 120 and resumed.rows_scored == 0
    first = pq.read_table(sorted((tmp_path / "out" / FOLDER).glob("*.parquet")))
    assert resumed.summary["mining"]["rows"] == first.num_rows > 0
    assert len(resumed.summary["mining"]["files"]) == len(
        list((tmp_path / "out").glob("*.parquet"))
    )

    # the next night: the same candidates, scored by the same teacher before, are not scored
    night = cfg.model_copy(update={"output": cfg.output.model_copy(update={"mode": "overwrite"})})
    again = run(night)
    assert again.rows_reused == 120 and again.summary["rows"]["new"] == 0
    second = pq.read_table(sorted((tmp_path / "out" / FOLDER).glob("*.parquet")))
    assert _rows(second) == _rows(first)
    names = {p.name for p in (tmp_path / "out" / FOLDER).glob("*.parquet")}
    assert names == {p.name for p in (tmp_path / "out").glob("*.parquet")}  # no stale twin
