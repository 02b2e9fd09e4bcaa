"""The scoring engine's shared logic: token-budget batches, input order, OOM splitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossenc.config import ModelConfig, RuntimeConfig
from crossenc.engine.scoring import LocalScorer, ScoringEngine, make_runner, pad_batch, plan_batches
from crossenc.engine.torch_runner import TorchRunner
from crossenc.models.describe import ModelInfo


def _info(num_labels: int = 1, activation: str = "identity") -> ModelInfo:
    return ModelInfo(
        source="fake",
        num_labels=num_labels,
        labels=tuple(f"L{i}" for i in range(num_labels)),
        activation=activation,
        max_length=512,
        uses_token_type_ids=True,
        pad_token_id=0,
        model_type="bert",
    )


class LengthRunner:
    """A fake model whose logit is the row's real length (from the attention mask) plus the
    first token id / 1000, so both order and content of every row can be checked."""

    def __init__(self, oom_above: int | None = None, oom_above_tokens: int | None = None) -> None:
        self.oom_above, self.oom_above_tokens = oom_above, oom_above_tokens
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, inputs: dict[str, np.ndarray]) -> torch.Tensor:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        if (self.oom_above is not None and len(ids) > self.oom_above) or (
            self.oom_above_tokens is not None and ids.size > self.oom_above_tokens
        ):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        self.shapes.append(ids.shape)
        real = mask.sum(axis=1).astype(np.float32)
        assert (ids[mask == 0] == 0).all(), "padding must be the pad token"
        assert (inputs["token_type_ids"][mask == 0] == 0).all()
        return torch.from_numpy(real + ids[:, 0] / 1000.0)[:, None]


def _rows(lengths: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    ids = [np.arange(1, n + 1, dtype=np.int64) + i for i, n in enumerate(lengths)]
    types = [np.ones(n, dtype=np.int64) for n in lengths]
    return ids, types


def _expected(lengths: list[int]) -> np.ndarray:
    return np.array([n + (1 + i) / 1000.0 for i, n in enumerate(lengths)], dtype=np.float32)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 300), min_size=0, max_size=200),
    st.integers(64, 4096),
    st.integers(1, 64),
)
def test_plan_batches_respects_the_budget_and_covers_every_row_once(lengths, budget, max_rows):
    lengths = np.array(lengths, dtype=np.int64)
    batches = plan_batches(lengths, budget, max_rows)
    flat = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= max_rows
        width = lengths[batch].max()
        # Within budget, unless a single row is longer than the budget by itself.
        assert len(batch) * width <= budget or len(batch) == 1
    # Longest first: every batch's rows are no longer than the previous batch's shortest.
    for prev, nxt in zip(batches, batches[1:], strict=False):
        assert lengths[nxt].max() <= lengths[prev].min()


def test_pad_batch_pads_to_the_longest_row_only():
    ids, types = _rows([3, 5, 1])
    out = pad_batch(ids, types, pad_token_id=7)
    assert out["input_ids"].shape == (3, 5) and out["input_ids"].dtype == np.int64
    assert out["attention_mask"].sum(axis=1).tolist() == [3, 5, 1]
    assert out["input_ids"][0].tolist() == [1, 2, 3, 7, 7]
    assert out["token_type_ids"][2].tolist() == [1, 0, 0, 0, 0]
    assert "token_type_ids" not in pad_batch(ids, None, 0)


def test_score_returns_input_order_and_counts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 120, size=300).tolist()
    ids, types = _rows(lengths)
    runner = LengthRunner()
    engine = ScoringEngine(
        ModelConfig(), _info(), RuntimeConfig(batch_tokens=1024, max_batch_rows=64), "", runner
    )
    out = engine.score(ids, types)
    assert out.shape == (300, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], _expected(lengths), rtol=0, atol=1e-5)
    assert all(r * w <= 1024 for r, w in runner.shapes)
    assert engine.stats.forward_passes == len(runner.shapes) > 1
    assert engine.stats.real_tokens == sum(lengths)
    assert engine.stats.computed_tokens == sum(r * w for r, w in runner.shapes)
    assert 0.8 < engine.stats.padding_efficiency <= 1.0  # sorted batches waste little
    assert engine.score([], None).shape == (0, 1)


def test_activation_is_applied_once_in_the_shared_engine():
    ids, types = _rows([2, 3])
    engine = ScoringEngine(
        ModelConfig(), _info(activation="sigmoid"), RuntimeConfig(), "", LengthRunner()
    )
    out = engine.score(ids, types)[:, 0]
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-_expected([2, 3]))), rtol=1e-6)


def _scored_through(runner: LengthRunner, lengths: list[int]) -> ScoringEngine:
    """An engine (4,096-token batches) that has scored ``lengths`` through ``runner``, every
    score checked."""
    engine = ScoringEngine(
        ModelConfig(), _info(), RuntimeConfig(batch_tokens=4096, max_batch_rows=256), "", runner
    )
    out = engine.score(*_rows(lengths))
    np.testing.assert_allclose(out[:, 0], _expected(lengths), rtol=0, atol=1e-5)
    return engine


def test_out_of_memory_splits_the_batch_and_retries():
    runner = LengthRunner(oom_above=8)
    engine = _scored_through(runner, [50] * 40 + [10] * 40)
    assert engine.stats.oom_splits > 0
    assert max(r for r, _ in runner.shapes) <= 8
    assert engine.stats.rows == 80


def test_out_of_memory_lowers_the_budget_for_later_batches(caplog):
    runner = LengthRunner(oom_above_tokens=1000)
    # ten 4,080-token batches; memory for 1,000 tokens
    engine = _scored_through(runner, [40] * 1000)
    # 4,080 tokens fail, then 2,040, then 1,040; every later batch is split to 520 before it is
    # tried (without the lowered budget each of the ten batches fails three times: 30)
    assert engine.stats.oom_splits == 3
    assert engine.max_tokens == 13 * 40
    assert max(rows * n for rows, n in runner.shapes) <= 1000
    assert "batches above 520 tokens are split from now on" in caplog.text
    engine.score(*_rows([40] * 1000))  # the next block starts from the lowered budget
    assert engine.stats.oom_splits == 3


def test_a_batch_that_ran_out_of_memory_is_freed_before_its_halves_run():
    """On a GPU the failed pass's tensors live in its frames, which the error's traceback keeps
    alive until the except block ends: retrying inside it would run the halves next to them."""
    import weakref

    class Activations:  # stands for the tensors of a forward pass
        pass

    alive: list[weakref.ref] = []

    def runner(inputs: dict[str, np.ndarray]) -> np.ndarray:
        held = Activations()
        assert all(ref() is None for ref in alive), "a failed pass's memory is still held"
        alive.append(weakref.ref(held))
        if len(inputs["input_ids"]) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return np.zeros((len(inputs["input_ids"]), 1), dtype=np.float32)

    ids, types = _rows([5] * 8)
    engine = ScoringEngine(ModelConfig(), _info(), RuntimeConfig(), "", runner)
    assert engine.score(ids, types).shape == (8, 1)
    assert engine.stats.oom_splits == 2


def test_a_row_that_does_not_fit_alone_is_left_unscored(caplog):
    lengths = [5, 30, 5, 5]
    engine = ScoringEngine(
        ModelConfig(), _info(), RuntimeConfig(), "", LengthRunner(oom_above_tokens=20)
    )
    out = engine.score(*_rows(lengths))[:, 0]
    assert engine.unfit == [1] and np.isnan(out[1])
    np.testing.assert_allclose(np.delete(out, 1), np.delete(_expected(lengths), 1), atol=1e-5)
    assert "out of memory on one row of 30 tokens alone: left unscored" in caplog.text
    engine.score(*_rows([5, 5]))
    assert engine.unfit == []  # per call


def test_replica_dead_letters_a_row_that_does_not_fit_alone(models, tmp_path):
    """The scorer replica turns such a row into a dead letter with its reason; the rest of the
    block is scored as usual."""

    from crossenc.engine.replica import ScorerReplica
    from crossenc.metrics import OOM
    from crossenc.models.describe import describe_model
    from crossenc.models.tokenize import ERROR, IDS, tokenize_batch
    from tests.helpers import job_config, long_row_block

    cfg = job_config(tmp_path / "in", tmp_path / "out", models[("bert", 1)])
    info = describe_model(cfg.model, None)
    block = long_row_block()
    tokenized = tokenize_batch(block, cfg, info)
    replica = ScorerReplica(cfg, info)
    plain = replica(tokenized)
    replica.engine.runner = LengthRunner(oom_above_tokens=40)  # the 60-word row: no room
    out = replica(tokenized)
    assert out.column(ERROR).to_pylist() == [
        None,
        f"out_of_memory:{len(tokenized.column(IDS)[1])}_tokens",
        "empty_text:query",
        None,
    ]
    scores = out.column("score").to_pylist()
    assert scores[1] is None and scores[2] is None
    assert plain.column("score").to_pylist()[1] is not None  # it scored with memory to spare
    assert out.column(OOM).to_pylist()[0] >= 1  # the splits that led there


def test_torch_runner_uses_sdpa_float32_on_cpu(models):
    folder = str(models[("bert", 1)])
    runner = TorchRunner(ModelConfig(dtype="float32", name=folder), folder, RuntimeConfig())
    assert runner.describe() == {
        "backend": "torch",
        "kind": "sequence-classification",
        "device": "cpu",
        "dtype": "float32",
        "attention": "sdpa",
        "compiled": False,
        "prepacked": True,
        "first_token": True,
    }


def test_quantize_needs_the_onnx_backend(models):
    folder = str(models[("bert", 1)])
    with pytest.raises(ValueError, match="onnx"):
        make_runner(ModelConfig(name=folder, quantize="int8"), _info(), RuntimeConfig(), folder)


@pytest.fixture
def inductor_config():
    """torch._inductor.config, the keys these tests change restored after each."""
    import torch._inductor.config as config

    keys = ("freezing", "cpp.cxx", "fx_graph_cache")  # a compiling runner sets freezing
    with config.patch({key: config.get_config_copy()[key] for key in keys}):
        yield config


def _nine_pairs() -> list[tuple[str, str]]:
    return [(f"query {i}", "passage words " * (i + 1)) for i in range(9)]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bert", "deberta-v2"])  # with and without type embeddings
def test_compiled_model_scores_as_the_eager_one_without_recompiling(arch, models, inductor_config):
    folder = str(models[(arch, 3)])
    runtime = RuntimeConfig(max_batch_rows=4)  # 9 pairs: batches of 4, 4 and 1 rows
    eager = LocalScorer(ModelConfig(dtype="float32", name=folder), runtime)
    compiled = LocalScorer(ModelConfig(dtype="float32", name=folder, compile=True), runtime)
    assert compiled.engine.stats.extra["compiled"] is True
    assert inductor_config.freezing is False  # set for the model's calls only
    # one graph, built on the warm-up batch, serves every later (rows, length), a 1-row batch too
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = compiled.predict(_nine_pairs())
    np.testing.assert_allclose(got, eager.predict(_nine_pairs()), rtol=0, atol=1e-5)
    assert compiled.engine.stats.forward_passes == 3


@pytest.mark.slow
def test_a_model_that_fails_to_compile_runs_eagerly(models, inductor_config, caplog):
    # no C++ compiler, and no cached kernels to stand in for one
    inductor_config.cpp.cxx = ("/nonexistent/c++",)
    inductor_config.fx_graph_cache = False
    folder = str(models[("electra", 1)])
    with caplog.at_level("WARNING", logger="crossenc.engine.torch_runner"):
        scorer = LocalScorer(
            ModelConfig(dtype="float32", name=folder, compile=True), RuntimeConfig()
        )
    assert scorer.engine.stats.extra["compiled"] is False
    assert "torch.compile of" in caplog.text and "running it eagerly" in caplog.text
    assert scorer.engine.runs == "torch cpu float32 sdpa prepacked"  # as without compile
    eager = LocalScorer(ModelConfig(dtype="float32", name=folder), RuntimeConfig())
    np.testing.assert_allclose(scorer.predict(_nine_pairs()), eager.predict(_nine_pairs()))


def test_compile_needs_the_torch_backend(models):
    folder = str(models[("bert", 1)])
    with pytest.raises(ValueError, match="model.compile needs model.backend torch"):
        make_runner(
            ModelConfig(name=folder, backend="onnx", compile=True), _info(), RuntimeConfig(), folder
        )


@pytest.mark.parametrize(
    ("device", "runtime", "budget"),
    [
        ("cpu", RuntimeConfig(), (4096, 256)),
        ("cuda", RuntimeConfig(), (65536, 1024)),
        ("cuda", RuntimeConfig(batch_tokens=8192), (8192, 1024)),
        ("cpu", RuntimeConfig(max_batch_rows=32), (4096, 32)),
    ],
)
def test_unset_batch_budget_follows_the_runners_device(device, runtime, budget):
    runner = LengthRunner()
    runner.describe = lambda: {"backend": "torch", "device": device}  # type: ignore[attr-defined]
    engine = ScoringEngine(ModelConfig(), _info(), runtime, "", runner)
    assert (engine.batch_tokens, engine.max_batch_rows) == budget
    lengths = [100] * 700
    engine.score(*_rows(lengths))
    assert max(rows for rows, _ in runner.shapes) == min(budget[1], budget[0] // 100)
