"""Rolling output files: size bounds, retried blocks, the time bound, the in-file rerank."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from crossenc.config import OutputConfig
from crossenc.inputs.plan import InputFile
from crossenc.job.accounting import usable_parts
from crossenc.metrics import SAMPLE, merge_part_metrics, metric_columns, part_metrics
from crossenc.models.tokenize import ERROR, ROW, SOURCE, TRUNCATED
from crossenc.output.writer import RollingWriter, WriterOptions, by_writer
from crossenc.tasks.base import GROUP_ROWS, RANK, SCORE


def _block(source: str, start: int, n: int, qid_every: int = 4, bad: tuple = ()) -> pa.Table:
    rows = np.arange(start, start + n)
    return pa.table(
        {
            "qid": pa.array(rows // qid_every),
            "pair_id": pa.array(rows),
            "score": pa.array(np.sin(rows).astype(np.float32)),
            TRUNCATED: pa.array([False] * n),
            SOURCE: pa.array([source] * n),
            ROW: pa.array(rows),
            ERROR: pa.array(["empty_text:query" if r in bad else None for r in rows], pa.string()),
        }
    )


def test_files_close_at_max_rows_and_parts_say_which_rows(tmp_path):
    out = OutputConfig(path=str(tmp_path / "out"))
    writer = RollingWriter(out, "20261201T000000000-0000abcd", "w0", WriterOptions(max_rows=30))
    parts = []
    for start in range(0, 95, 10):
        parts += writer.append(_block("a.parquet", start, min(10, 95 - start), bad=(13,)))
    parts += writer.flush()
    sizes = [pq.read_metadata(p.file).num_rows for p in parts]
    dead = [p.dead_rows for p in parts]
    assert [s + d for s, d in zip(sizes, dead, strict=True)] == [30, 30, 30, 5]
    assert [json.loads(p.ranges) for p in parts] == [[[0, 30]], [[30, 60]], [[60, 90]], [[90, 95]]]
    assert dead == [1, 0, 0, 0] and parts[0].dead_file.endswith(parts[0].file.rsplit("/")[-1])
    assert not list((tmp_path / "out").glob(".*inprogress"))  # every file renamed when done


def test_a_block_sent_twice_is_written_once(tmp_path):
    out = OutputConfig(path=str(tmp_path / "out"))
    writer = RollingWriter(out, "20261201T000000000-0000abcd", "w0")
    writer.append(_block("a.parquet", 0, 10))
    writer.append(_block("a.parquet", 0, 10))  # a retried task whose first try landed
    writer.append(_block("a.parquet", 5, 10))  # overlapping: only rows 10..14 are new
    (part,) = writer.flush()
    assert part.rows == 15 and json.loads(part.ranges) == [[0, 15]]
    assert sorted(pq.read_table(part.file)["pair_id"].to_pylist()) == list(range(15))


def test_a_file_open_longer_than_max_seconds_closes(tmp_path):
    out = OutputConfig(path=str(tmp_path / "out"))
    writer = RollingWriter(out, "20261201T000000000-0000abcd", "w0", WriterOptions(max_seconds=0.2))
    assert writer.append(_block("a.parquet", 0, 5)) == []
    time.sleep(0.3)
    closed = writer.append(_block("a.parquet", 5, 5))
    assert [p.rows for p in closed] == [10]


def _ranks(table: pa.Table) -> dict[int, int]:
    return dict(zip(table["pair_id"].to_pylist(), table[RANK].to_pylist(), strict=True))


def test_in_file_rerank_holds_a_file_until_complete_and_ranks_as_the_shuffle(tmp_path):
    out = OutputConfig(path=str(tmp_path / "out"))
    options = WriterOptions(rerank_by="qid", top_k=2, expected_rows={"a.parquet": 20})
    writer = RollingWriter(out, "20261201T000000000-0000abcd", "w0", options)
    blocks = [_block("a.parquet", 0, 12, bad=(3,)), _block("a.parquet", 12, 8)]
    assert writer.append(blocks[0]) == []
    assert writer.pieces == {}  # held, not written
    writer.append(blocks[1])
    (part,) = writer.flush()
    whole = pa.concat_tables(blocks)
    want: dict[int, int] = {}
    for q in range(5):  # each group's scored rows, best first; the best 2 kept
        group = whole.filter(pc.and_(pc.equal(whole["qid"], q), pc.is_null(whole[ERROR])))
        order = np.argsort(-group[SCORE].to_numpy(), kind="stable")[:2]
        want |= {group["pair_id"][int(i)].as_py(): r + 1 for r, i in enumerate(order)}
    assert _ranks(pq.read_table(part.file)) == want
    assert part.rows == 10 and part.dead_rows == 1 and part.dropped_rows == 9


def test_held_groups_are_written_once_each_query_is_whole_and_routed_to_one_writer(tmp_path):
    out = OutputConfig(path=str(tmp_path / "out"))
    options = WriterOptions(hold_groups="qid")
    writer = RollingWriter(out, "20261201T000000000-0000abcd", "w0", options)

    def shuffled(block: pa.Table) -> pa.Table:  # as after the shuffle: each row's group size
        return block.append_column(GROUP_ROWS, pa.array([4] * block.num_rows))

    a, b = shuffled(_block("a.parquet", 0, 6)), shuffled(_block("b.parquet", 6, 6))
    # query 1 = rows 4..7: two in a.parquet, two in b.parquet; first a's, then b's
    assert writer.append(a) == [] and writer.held_groups.num_rows == 2  # query 1 waits
    assert sorted(p.input_file for p in writer.flush()) == ["a.parquet"]  # query 0
    writer.append(b.slice(0, 3))  # query 1 whole now; query 2 (rows 8..11) not yet
    parts = writer.flush()
    assert {p.input_file: p.rows for p in parts} == {"a.parquet": 2, "b.parquet": 2}
    assert writer.held_groups.num_rows == 1
    writer.append(b.slice(3))
    (part,) = writer.flush()
    assert sorted(pq.read_table(part.file)["pair_id"].to_pylist()) == [8, 9, 10, 11]
    assert GROUP_ROWS not in pq.read_table(part.file).column_names

    writers = ["w0", "w1", "w2"]
    batch = _block("c.parquet", 0, 400, qid_every=3)
    routed = by_writer(batch, writers, options)
    assert sum(t.num_rows for _, t in routed) == 400 and len(routed) == 3
    seen = [set(t["qid"].to_pylist()) for _, t in routed]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    again = dict(by_writer(batch.slice(100, 50), writers, options))  # the same writer, later
    for w, t in again.items():
        assert set(t["qid"].to_pylist()) <= seen[writers.index(w)]


def test_merged_metrics_keep_exact_counts():
    blocks = []
    for s in range(0, 1000, 50):
        block = _block("a.parquet", s, 50)
        valid = np.ones(50, dtype=bool)
        for name, col in metric_columns("r", 1.0, np.full(50, 9), 500, valid).items():
            block = block.append_column(name, col)
        blocks.append(block)
    merged = merge_part_metrics([part_metrics(b, seed=i) for i, b in enumerate(blocks)])
    whole = pa.concat_tables(blocks)["score"].to_numpy()
    score = merged["scores"]["score"]
    assert score["n"] == 1000 and score["sum"] == pytest.approx(
        float(whole.astype(np.float64).sum()), abs=1e-9
    )
    assert score["min"] == pytest.approx(whole.min()) and score["max"] == pytest.approx(whole.max())
    assert len(score["sample"]) == SAMPLE  # 20 x 50 scores, subsampled by weight
    assert set(score["sample"]) <= {float(f"{v:.7g}") for v in whole}
    assert merged["replicas"]["r"][0] == 1000 and merged["tokens"] == {"9": 1000}


def test_a_resume_takes_output_files_whole_or_not_at_all(tmp_path):
    out = OutputConfig(path=str(tmp_path / "out"))
    writer = RollingWriter(out, "20261201T000000000-0000abcd", "w0", WriterOptions(max_rows=8))
    parts = writer.append(pa.concat_tables([_block("a", 0, 6), _block("b", 0, 6)])) + writer.flush()
    files = (InputFile("a", 6, (6,)), InputFile("b", 6, (6,)))
    assert {p.siblings for p in parts} == {2, 1}
    assert len(usable_parts(parts, files)) == len(parts)
    first_file = [p for p in parts if p.file == parts[0].file]
    assert len(first_file) == 2
    assert usable_parts([first_file[0]], files) == []  # its sibling is missing: none of it
    shrunk = (InputFile("a", 5, (5,)), InputFile("b", 6, (6,)))
    assert all(p.input_file == "b" for p in usable_parts(parts, shrunk) if p.file != parts[0].file)
