"""bench.evaluate's labelled log and contender configs (the timed runs are the benchmark's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from bench.evaluate import _config, labelled_log
from crossenc.config import build_config
from tests.helpers import read_input


def test_the_labelled_log_has_one_graded_relevant_passage_a_query(tmp_path: Path) -> None:
    labelled_log(tmp_path / "log", 300, seed=3)
    table = read_input(tmp_path / "log")
    assert table.num_rows == 300 and len(list((tmp_path / "log").glob("*.parquet"))) == 8
    relevant = table.filter(pc.greater(table.column("relevance"), 0))
    assert sorted(relevant.column("qid").to_pylist()) == list(range(30))  # one a query
    grades = relevant.column("relevance").to_numpy()
    assert set(np.unique(grades)) <= {1, 2, 3} and len(np.unique(grades)) > 1


def test_the_contenders_configs_load(tmp_path: Path) -> None:
    models = {"minilm": tmp_path / "a", "tiny": tmp_path / "b"}
    one = build_config(_config(tmp_path / "in", tmp_path / "one", models, None))
    assert list(one.models) == ["minilm", "tiny"] and one.task == "evaluate"
    second = build_config(
        _config(tmp_path / "in", tmp_path / "b-out", {"tiny": models["tiny"]}, tmp_path / "a-out")
    )
    assert not second.models and second.model.name == str(models["tiny"])
    assert second.evaluate.compare_to == [str(tmp_path / "a-out")]
