"""crossenc plan: counts from footers, token lengths of a sample, cost; quick on many files."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq

from crossenc.cli import EXIT_OK, main
from crossenc.config import build_config
from crossenc.estimate import record_throughput


def test_plan_on_many_small_files(models, tmp_path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    for i in range(2000):
        n = 1 + i % 3
        pq.write_table(
            pa.table(
                {
                    "qid": [i] * n,
                    "doc_id": [f"d{i}-{j}" for j in range(n)],
                    "query": ["how many people live in berlin"] * n,
                    "passage": ["berlin has a large population " * (1 + j) for j in range(n)],
                }
            ),
            root / f"part-{i:05d}.parquet",
        )
    rows = sum(1 + i % 3 for i in range(2000))
    args = [
        "plan",
        "--config",
        "configs/msmarco-rerank.yaml",
        "--set",
        f"input.path={root}",
        "--set",
        f"output.path={tmp_path / 'out'}",
        "--set",
        f"model.name={models[('bert', 1)]}",
        "--set",
        "runtime.replicas=4",
        "--set",
        f"runtime.cache_dir={tmp_path / 'cache'}",
        "--json",
    ]
    started = time.monotonic()
    assert main([*args, "--pairs-per-second", "100"]) == EXIT_OK
    elapsed = time.monotonic() - started
    plan = json.loads(capsys.readouterr().out)
    assert plan["files"] == 2000 and plan["rows"] == rows
    assert plan["sample_rows"] > 0 and plan["token_length"]["max"] >= plan["token_length"]["p50"]
    assert plan["replica_hours"] == round(rows / 100 / 3600, 4)
    assert plan["wall_hours"] == round(rows / 100 / 3600 / 4, 4)
    assert elapsed < 60, f"plan took {elapsed:.1f} s on 2000 files"
    assert not (tmp_path / "out").exists()

    # Without a figure, the plan uses what an earlier run measured on the same model.
    cfg = build_config(
        {
            "input": {"path": str(root)},
            "output": {"path": str(tmp_path / "o")},
            "model": {"name": str(models[("bert", 1)])},
            "runtime": {"cache_dir": str(tmp_path / "cache")},
        }
    )
    record_throughput(cfg, 250.0)
    assert main(args) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["pairs_per_second_per_replica"] == 250.0
    assert plan["throughput_source"] == "measured by an earlier run"
