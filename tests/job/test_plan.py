"""crossenc plan: counts from footers, token lengths of a sample, cost; quick on many files."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq

from crossenc.cli import EXIT_OK, main
from crossenc.config import build_config
from crossenc.job.estimate import record_throughput


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


def test_plan_says_how_many_cpus_feed_a_gpu_and_warns_when_the_machine_has_too_few(
    models, pairs_dir, tmp_path, capsys, caplog
):
    from crossenc.config import ModelConfig
    from crossenc.job.estimate import cpus_to_feed, gpu_pairs_per_second, weight_params
    from crossenc.models.load import load_hf_config

    args = [
        "plan",
        "--config",
        "configs/msmarco-rerank.yaml",
        "--set",
        f"input.path={pairs_dir}",
        "--set",
        f"output.path={tmp_path / 'out'}",
        "--set",
        f"model.name={models[('bert', 1)]}",
        "--json",
    ]
    assert main([*args, "--set", "runtime.gpus_per_replica=1"]) == EXIT_OK
    captured = capsys.readouterr()
    plan = json.loads(captured.out)
    # a tiny model: the card's rate is the host-bound cap; 2 cores cannot feed it
    assert plan["gpu_pairs_per_second_estimate"] == 58_000.0
    assert plan["cpus_to_feed_each_gpu"] > 2
    assert "GPU(s) would score ~58,000 pairs/s each" in plan["feed_warning"]
    assert "the GPUs will wait on the CPUs" in caplog.text  # logged for the user too
    # a given GPU throughput is used as it is; one CPU core per 1,000 pairs/s is not enough
    assert main([*args, "--set", "runtime.gpus_per_replica=1", "--pairs-per-second", "50"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["gpu_pairs_per_second_estimate"] == 50.0 and "feed_warning" in plan
    # CPU replicas: no GPU to feed
    assert main(args) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["cpus_to_feed_each_gpu"] is None and plan["feed_warning"] is None
    # the size model: BERT-base-size layers at 76 tokens, ~18.6k pairs/s as measured (17-20k)
    bert = load_hf_config(ModelConfig(name=str(models[("bert", 1)])), str(models[("bert", 1)]))
    bert.hidden_size, bert.num_hidden_layers, bert.intermediate_size = 768, 12, 3072
    assert 17_000 < gpu_pairs_per_second(weight_params(bert), 76) < 20_000
    assert cpus_to_feed(18_600, 152) == 2 * cpus_to_feed(18_600, 76)  # longer pairs, more CPU
