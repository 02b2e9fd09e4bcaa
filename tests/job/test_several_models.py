"""Several models in one pass (``models:``): the config, the tokenizer groups, each model's
named columns equal to its own run's, a row one model cannot score dead-lettered with that
model's name and the others' scores, per-model throughput, and an evaluation of several
models with their paired comparison."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from crossenc.config import ConfigError, build_config
from crossenc.job.result import summary_lines
from crossenc.job.run_job import run_job
from crossenc.models.describe import describe_model
from crossenc.models.several import build_model_set, group_column, named, tokenize_models
from crossenc.models.tokenize import ERROR, IDS, ROW, SOURCE, TRUNCATED
from crossenc.output.writer import dead_columns
from tests.engine.test_engine import LengthRunner
from tests.helpers import job_config, long_row_block, read_output, several_config


def test_named_columns():
    assert named("score", "") == "score"
    assert named("score", "minilm") == "score_minilm"
    assert named("score_entailment", "nli") == "score_nli_entailment"
    assert named("label", "nli") == "label_nli"


def test_config_refuses_what_takes_one_model(tmp_path, models):
    paths = {"a": models[("bert", 1)], "b": models[("electra", 1)]}
    cfg = several_config(tmp_path / "in", tmp_path / "out", paths)
    assert [n for n, _ in cfg.model_views()] == ["a", "b"]
    assert cfg.model == cfg.models["a"]  # the first is ``model`` too
    again = build_config(cfg.model_dump(mode="json"))  # a dumped config (both keys) loads
    assert again.models == cfg.models and again.fingerprint() == cfg.fingerprint()
    one = job_config(tmp_path / "in", tmp_path / "out", paths["a"])
    assert one.fingerprint() != cfg.fingerprint()
    chunked = several_config(tmp_path / "in", tmp_path / "out", paths).model_dump(mode="json")
    chunked["models"]["b"]["long_text"] = "chunk"
    with pytest.raises(ValueError, match="model.long_text chunk takes one model; models names 2 "):
        build_config(chunked)
    with pytest.raises(ValueError, match="models.Big: a model's short name"):
        several_config(tmp_path / "in", tmp_path / "out", {"Big": paths["a"]})
    data = cfg.model_dump(mode="json")
    data["model"]["name"] = str(paths["b"])
    with pytest.raises((ValueError, ConfigError), match="set model or models, not both"):
        build_config(data)


def test_models_sharing_a_tokenizer_share_its_ids(tmp_path, models):
    bert, electra = models[("bert", 1)], models[("electra", 1)]
    paths = {"one": bert, "same": bert, "short": bert, "el": electra}
    data = several_config(tmp_path / "in", tmp_path / "out", paths).model_dump(mode="json")
    data["models"]["same"]["activation"] = "sigmoid"  # scores differ, token ids do not
    data["models"]["short"]["max_length"] = 16  # cut sooner: ids of its own
    cfg = build_config(data)
    infos = {n: describe_model(v.model, None) for n, v in cfg.model_views()}
    models_ = build_model_set(cfg, infos)
    assert {m.name: m.group for m in models_.members} == {"one": 0, "same": 0, "short": 1, "el": 2}
    block = pa.table(
        {
            "query": ["a question", "", "another one"],
            "passage": ["a passage", "text", " ".join(["word"] * 400)],
            "qid": [1, 2, 3],
            "doc_id": ["d1", "d2", "d3"],
            SOURCE: ["f.parquet"] * 3,
            ROW: [0, 1, 2],
        }
    )
    out = tokenize_models(block, models_)
    ids = [c for c in out.column_names if c.startswith(IDS)]
    assert ids == [group_column(IDS, g) for g in range(len(models_.encoders))]
    assert out.column(ERROR).to_pylist() == [None, "empty_text:query", None]
    assert out.column(TRUNCATED).to_pylist() == [False, False, True]
    short = out.column(group_column(IDS, 1)).to_pylist()
    assert [len(r) for r in short] == [len(out.column(IDS)[0]), 0, 16]


@pytest.mark.slow
def test_one_pass_scores_as_each_models_own_run(ray_local, models, tmp_path, pairs_dir):
    paths = {"bert": models[("bert", 1)], "electra": models[("electra", 1)]}
    cfg = several_config(pairs_dir, tmp_path / "both", paths, output={"report": None})
    result = run_job(cfg)
    order = [("qid", "ascending"), ("doc_id", "ascending")]
    both = read_output(tmp_path / "both").sort_by(order)
    assert "score" not in both.column_names
    assert {"score_bert", "score_electra"} <= set(both.column_names)
    for name, path in paths.items():
        run_job(job_config(pairs_dir, tmp_path / name, path))
        alone = read_output(tmp_path / name).sort_by(
            [("qid", "ascending"), ("doc_id", "ascending")]
        )
        np.testing.assert_allclose(
            both.column(f"score_{name}").to_numpy(), alone.column("score").to_numpy(), atol=1e-6
        )
    assert result.rows_written == 300
    rows = {m["model"]: m for m in result.summary["models"]}
    assert set(rows) == {"bert", "electra"}
    assert all(m["rows"] == 300 and m["docs_per_second_per_replica"] > 0 for m in rows.values())
    busy = sum(r["busy_seconds"] for r in result.summary["replicas"])
    # (each figure rounded to the ms: a tiny model's 0.1 s can differ by the rounding)
    assert sum(m["busy_seconds"] for m in rows.values()) == pytest.approx(busy, rel=0.01, abs=0.002)
    assert set(result.summary["scores"]) == {"score_bert", "score_electra"}
    electra = rows["electra"]
    (line,) = [line for line in summary_lines(result) if line.startswith("model electra ")]
    rate, busy = electra["docs_per_second_per_replica"], electra["busy_seconds"]
    assert line.endswith(f"300 rows, {rate} docs/s per replica, busy {busy} s")


@pytest.mark.slow
def test_each_model_reuses_its_own_earlier_scores(ray_local, models, tmp_path, pairs_dir):
    paths = {"bert": models[("bert", 1)], "electra": models[("electra", 1)]}
    order = [("qid", "ascending"), ("doc_id", "ascending")]
    out = tmp_path / "nightly"
    incremental = {"incremental": True, "mode": "overwrite"}
    run_job(job_config(pairs_dir, out, paths["bert"], output=incremental))  # last night: bert
    bert_alone = read_output(out).sort_by(order)

    # tonight electra joins: bert's scores are taken from last night, electra scores every row
    cfg = several_config(pairs_dir, out, paths, output=incremental)
    both = run_job(cfg)
    assert both.rows_reused == 0  # no row had every model's scores
    rows = {m["model"]: m["rows"] for m in both.summary["models"]}
    assert rows == {"bert": 0, "electra": 300}
    scored = read_output(out).sort_by(order)
    assert scored.column("score_bert").to_pylist() == bert_alone.column("score").to_pylist()
    run_job(job_config(pairs_dir, tmp_path / "electra", paths["electra"]))
    electra = read_output(tmp_path / "electra").sort_by(order).column("score").to_numpy()
    np.testing.assert_allclose(scored.column("score_electra").to_numpy(), electra, atol=1e-6)

    # the next night: both models' scores are there, no model is loaded
    again = run_job(cfg)
    assert again.rows_reused == 300 and again.summary["rows"]["new"] == 0
    assert read_output(out).sort_by(order).equals(scored)

    # a lone model's run finds its scores in the several models' run (score_electra)
    alone = run_job(job_config(pairs_dir, out, paths["electra"], output=incremental))
    assert alone.rows_reused == 300
    np.testing.assert_allclose(read_output(out).sort_by(order).column("score"), electra, atol=1e-6)


def test_a_row_one_model_cannot_fit_keeps_the_others_score(ray_local, models, tmp_path):
    from crossenc.engine.replica import ScorerReplica

    paths = {"bert": models[("bert", 1)], "electra": models[("electra", 1)]}
    cfg = several_config(tmp_path / "in", tmp_path / "out", paths)
    infos = {n: describe_model(v.model, v.runtime.cache_dir) for n, v in cfg.model_views()}
    models_ = build_model_set(cfg, infos)
    block = long_row_block()
    tokenized = tokenize_models(block, models_)
    replica = ScorerReplica(cfg, infos["bert"], models=models_)
    replica.engines[1].runner = LengthRunner(oom_above_tokens=40)  # electra: no room for row 1
    out = replica(tokenized)
    longest = len(tokenized.column(group_column(IDS, models_.members[1].group))[1])
    assert out.column(ERROR).to_pylist() == [
        None,
        f"electra: out_of_memory:{longest}_tokens",
        "empty_text:query",
        None,
    ]
    bert, electra = out.column("score_bert").to_pylist(), out.column("score_electra").to_pylist()
    assert bert[1] is not None and electra[1] is None  # the other model's score is kept
    assert bert[2] is None and electra[2] is None and None not in (bert[0], electra[3])
    assert not [c for c in out.column_names if c.startswith(IDS)]  # every group's ids dropped
    kept = dead_columns(out.column_names, several=True)
    assert "score_bert" in kept and "score_bert" not in dead_columns(out.column_names)


def _check_ranks(out: pa.Table, names: list[str], top_k: int, group_rows: int) -> int:
    """Each model's ranks in ``out`` (a rerank's kept rows) are its own scores' order within
    the group, its best top_k are all there, and every row is in some model's top_k; returns
    the rows left out (groups of ``group_rows``)."""
    left_out = 0
    for qid in pc.unique(out.column("qid")).to_pylist():
        group = out.filter(pc.equal(out.column("qid"), qid))
        ranks = {n: group.column(f"rank_{n}").to_numpy() for n in names}
        for name in names:
            scores = group.column(f"score_{name}").to_numpy()
            assert set(range(1, top_k + 1)) <= set(ranks[name])  # its whole top k is kept
            order = np.argsort(ranks[name])
            assert (np.diff(scores[order]) <= 0).all()  # best score first
            assert len(set(ranks[name])) == group.num_rows and ranks[name].max() <= group_rows
        assert (np.minimum.reduce(list(ranks.values())) <= top_k).all()
        left_out += group_rows - group.num_rows
    return left_out


@pytest.mark.slow
@pytest.mark.parametrize("within_files", [None, False])
def test_rerank_with_two_models_ranks_by_each(ray_local, models, tmp_path, pairs_dir, within_files):
    paths = {"bert": models[("bert", 1)], "electra": models[("electra", 1)]}
    runtime = {"writers": 2} if within_files is False else {}  # False: a shuffle
    rerank = {"top_k": 3, "within_files": within_files}
    cfg = several_config(
        pairs_dir, tmp_path / "out", paths, task="rerank", rerank=rerank, runtime=runtime
    )
    result = run_job(cfg)
    out = read_output(tmp_path / "out")
    assert {"score_bert", "rank_bert", "score_electra", "rank_electra"} <= set(out.column_names)
    assert "rank" not in out.column_names and "score" not in out.column_names
    left_out = _check_ranks(out, ["bert", "electra"], top_k=3, group_rows=10)
    assert out.num_rows + left_out == 300 and 90 < out.num_rows < 300  # the models differ
    assert result.rows_written == out.num_rows
    alone = run_job(
        job_config(pairs_dir, tmp_path / "bert", paths["bert"], task="rerank", rerank=rerank)
    )
    bert = read_output(tmp_path / "bert")
    top = out.filter(pc.less_equal(out.column("rank_bert"), 3)).sort_by([("qid", "ascending")])
    assert alone.rows_written == 90
    got = top.select(["qid", "doc_id", "rank_bert"]).sort_by(
        [("qid", "ascending"), ("rank_bert", "ascending")]
    )
    want = bert.select(["qid", "doc_id", "rank"]).sort_by(
        [("qid", "ascending"), ("rank", "ascending")]
    )
    assert got.column("doc_id").to_pylist() == want.column("doc_id").to_pylist()


def test_a_pool_per_model_hands_on_the_rows_and_the_reasons_a_model_failed(ray_local, models):
    from crossenc.engine.replica import ScorerReplica
    from crossenc.metrics import MODEL_ERRORS
    from crossenc.output.writer import visible_columns

    paths = {"bert": models[("bert", 1)], "electra": models[("electra", 1)]}
    cfg = several_config("in", "out", paths, runtime={"model_pools": "per_model"})
    infos = {n: describe_model(v.model, v.runtime.cache_dir) for n, v in cfg.model_views()}
    models_ = build_model_set(cfg, infos)
    tokenized = tokenize_models(long_row_block(), models_)
    first = ScorerReplica(cfg, infos["bert"], models=models_, pool=0)
    second = ScorerReplica(cfg, infos["bert"], models=models_, pool=1)
    assert list(first.engines) == [0] and list(second.engines) == [1]  # one model each
    first.engines[0].runner = LengthRunner(oom_above_tokens=40)  # bert: no room for row 1
    handed = first(tokenized)
    assert handed.column(ERROR).to_pylist()[1] is None  # not yet a dead letter
    assert handed.column(MODEL_ERRORS).to_pylist()[1].startswith("bert: out_of_memory:")
    assert IDS in handed.column_names and "_replica#0" in handed.column_names
    assert "score_electra" not in handed.column_names
    out = second(handed)
    shared = ScorerReplica(cfg, infos["bert"], models=models_)
    shared.engines[0].runner = LengthRunner(oom_above_tokens=40)
    want = shared(tokenized)
    assert out.column(ERROR).to_pylist() == want.column(ERROR).to_pylist()
    assert out.column(ERROR).to_pylist()[1].startswith("bert: out_of_memory:")
    for name in paths:
        np.testing.assert_allclose(
            out.column(f"score_{name}").to_numpy(zero_copy_only=False),
            want.column(f"score_{name}").to_numpy(zero_copy_only=False),
            atol=1e-6,
        )
    assert out.column("score_electra").to_pylist()[1] is not None  # the other model's kept
    assert MODEL_ERRORS not in out.column_names and IDS not in out.column_names
    visible = visible_columns(out.column_names)
    assert not [c for c in visible if c.startswith("_")]  # the pools' metrics are hidden


@pytest.mark.slow
def test_a_pool_per_model_scores_as_one_replica_of_both(ray_local, models, tmp_path, pairs_dir):
    paths = {"bert": models[("bert", 1)], "electra": models[("electra", 1)]}
    order = [("qid", "ascending"), ("doc_id", "ascending")]
    results = {}
    for pools in ("shared", "per_model"):
        cfg = several_config(pairs_dir, tmp_path / pools, paths, runtime={"model_pools": pools})
        results[pools] = run_job(cfg)
    shared, per_model = (read_output(tmp_path / p).sort_by(order) for p in results)
    assert per_model.column_names == shared.column_names
    for name in paths:
        np.testing.assert_allclose(
            per_model.column(f"score_{name}").to_numpy(),
            shared.column(f"score_{name}").to_numpy(),
            atol=1e-6,
        )
    summary = results["per_model"].summary
    assert [r["rows"] for r in summary["replicas"]] == [300, 300]  # a replica in each pool
    assert len({r["replica"] for r in summary["replicas"]}) == 2
    assert {m["model"]: m["rows"] for m in summary["models"]} == {"bert": 300, "electra": 300}
    assert summary["rows"] == results["shared"].summary["rows"]


@pytest.mark.slow
def test_evaluation_of_two_models_in_one_pass(ray_local, models, tmp_path):
    from tests.evaluation.test_evaluate_job import labelled

    rng = np.random.default_rng(8)
    labelled(tmp_path, 160, seed=8, relevance=(rng.random(160) < 0.3).astype(np.int64))
    paths = {"bert": models[("bert", 1)], "electra": models[("electra", 1)]}
    cfg = several_config(
        tmp_path / "in",
        tmp_path / "out",
        paths,
        task="evaluate",
        evaluate={"kind": "rerank", "at_k": 5},
    )
    result = run_job(cfg)
    got = result.summary["evaluation"]
    by_name = {m["name"]: m for m in got["models"]}
    assert got["metrics"] == by_name["bert"]["metrics"]  # the first is the section's own
    for name, path in paths.items():
        alone = run_job(
            job_config(
                tmp_path / "in",
                tmp_path / f"alone-{name}",
                path,
                task="evaluate",
                evaluate={"kind": "rerank", "at_k": 5},
            )
        ).summary["evaluation"]
        for metric, value in alone["metrics"].items():
            assert by_name[name]["metrics"][metric] == pytest.approx(value, abs=1e-9), metric
    per_query = pq.read_table(got["per_query"])
    assert per_query.column_names[:2] == ["qid", "model"]
    assert sorted(set(per_query.column("model").to_pylist())) == ["bert", "electra"]
    (pair,) = got["compared"]
    assert pair["model"] == "electra" and pair["baseline"] == "bert"
    rows = per_query.filter(pc.equal(per_query.column("model"), "electra")).sort_by("qid")
    base = per_query.filter(pc.equal(per_query.column("model"), "bert")).sort_by("qid")
    diff = rows.column("ndcg@5").to_numpy() - base.column("ndcg@5").to_numpy()
    assert pair["differences"]["ndcg@5"]["mean_difference"] == pytest.approx(diff.mean())
    board = got["leaderboard"]
    assert [r["model"] for r in board] == ["bert", "electra"]
    assert board[1]["ndcg@5"] == by_name["electra"]["metrics"]["ndcg@5"]
    assert all(r["docs_per_second_per_replica"] > 0 for r in board)
    text = "\n".join(summary_lines(result))
    assert "electra - bert (20 queries): mrr@5 " in text


def test_each_model_on_a_faster_path_is_gated_on_its_own(models, pairs_dir, tmp_path):
    from crossenc.inputs.plan import plan_job
    from crossenc.job.gate import gate

    bert = models[("bert", 1)]
    paths = {"exact": bert, "fast": models[("electra", 1)]}
    data = several_config(pairs_dir, tmp_path / "out", paths).model_dump(mode="json")
    data["models"]["fast"].update({"backend": "torch", "dtype": "bfloat16"})
    data["quality_gate"] = {"sample": 60, "min_spearman": 0.5}
    cfg = build_config(data)
    plan = plan_job(cfg)
    assert [n for n, _ in plan.others] == ["fast"]
    gated, entry = gate(cfg, plan)
    assert list(entry["models"]) == ["fast"]  # the float32 model is not checked
    assert entry["path"] == entry["models"]["fast"]["path"] and "bfloat16" in entry["path"]
    assert entry["pairs"] == 60 and entry["passed"] and entry["seconds"] > 0
    assert gated.model_infos(cfg).keys() == {"exact", "fast"}


def test_the_scorer_api_takes_several_models(ray_local, models, tmp_path):
    import ray

    from crossenc import scorer

    paths = {"bert": models[("bert", 1)], "electra": models[("electra", 1)]}
    cfg = several_config(tmp_path / "in", tmp_path / "out", paths)
    rows = [
        {"query": f"q {i}", "passage": f"passage {i}", "qid": i, "doc_id": "d"} for i in range(6)
    ]
    rows[2]["passage"] = ""
    out = scorer(cfg)(ray.data.from_items(rows)).to_pandas().sort_values("qid")
    assert {"score_bert", "score_electra", "reason"} <= set(out.columns)
    assert out["reason"].tolist()[2] == "empty_text:passage"
    for name in paths:
        assert out[f"score_{name}"].isna().tolist() == [False, False, True, False, False, False]
    assert not np.allclose(out["score_bert"].iloc[[0, 1]], out["score_electra"].iloc[[0, 1]])

    ranked = several_config(
        tmp_path / "in", tmp_path / "out", paths, task="rerank", rerank={"top_k": 2}
    )
    rows = [dict(r, qid=i // 3) for i, r in enumerate(rows)]  # 2 groups of 3, one row dead
    out = pa.Table.from_pandas(scorer(ranked)(ray.data.from_items(rows)).to_pandas())
    good = out.filter(pc.is_null(out.column("reason")))
    assert out.num_rows == good.num_rows + 1  # the dead row, with its reason
    assert good.num_rows + _check_ranks(good, list(paths), top_k=2, group_rows=3) == 6

    mixed = several_config(
        tmp_path / "in",
        tmp_path / "out",
        {"bert": models[("bert", 1)], "nli": models[("bert", 3)]},
        task="classify",
        classify={"threshold": 0.5},
    )
    with pytest.raises(ConfigError, match="classify.threshold applies to single-output"):
        scorer(mixed)  # the 3-label model refuses a threshold, as it does alone
