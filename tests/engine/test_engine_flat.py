"""The engine on flat buffers: vectorised padding against a plain loop, scores from flat
buffers against each row scored alone, out-of-memory splitting from them, a runner's staging
buffers and deferred logits (the GPU protocol, emulated and through TorchRunner on CPU), and
the scorer replica on Arrow blocks however they are sliced or chunked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossenc.config import ModelConfig, RuntimeConfig
from crossenc.engine.scoring import LocalScorer, ScoringEngine, flatten, pad_batch, pad_spans
from crossenc.models.describe import ModelInfo


def _info(num_labels: int = 2, padding_side: str = "right", pad: int = 0) -> ModelInfo:
    return ModelInfo(
        source="fake",
        num_labels=num_labels,
        labels=tuple(f"L{i}" for i in range(num_labels)),
        activation="identity",
        max_length=512,
        uses_token_type_ids=True,
        pad_token_id=pad,
        model_type="bert",
        padding_side=padding_side,
    )


def _reference_pad(rows, types, pad, left):
    """The plain loop: one row at a time."""
    width = max([len(r) for r in rows] + [1])
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    tt = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, cols], mask[i, cols] = row, 1
        if types is not None:
            tt[i, cols] = types[i]
    return ids, mask, tt


ragged = st.lists(st.lists(st.integers(1, 30_000), min_size=0, max_size=40), max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    ragged,
    st.booleans(),
    st.booleans(),
    st.sampled_from([0, 1, 7, 151_643]),
    st.sampled_from([np.int32, np.int64]),
    st.randoms(use_true_random=False),
)
def test_vectorised_padding_equals_a_loop_over_rows(rows, left, with_types, pad, dtype, rnd):
    """Rows anywhere in the flat buffers (a shuffled subset, as the engine's batches are),
    right and left, with and without type ids, any pad token."""
    arrays = [np.asarray(r, dtype=dtype) for r in rows]
    type_arrays = [np.asarray([rnd.randint(0, 1) for _ in r], dtype=np.int8) for r in rows]
    values, offsets, type_values = flatten(arrays, type_arrays if with_types else None)
    picked = list(range(len(rows)))
    rnd.shuffle(picked)
    picked = np.asarray(picked[: rnd.randint(0, len(picked))], dtype=np.int64)
    got = pad_spans(
        values.astype(dtype),  # int32 as Arrow holds ids, or int64
        offsets[:-1][picked],
        np.diff(offsets)[picked],
        type_values,
        pad,
        left,
    )
    ids, mask, tt = _reference_pad(
        [arrays[i] for i in picked], [type_arrays[i] for i in picked], pad, left
    )
    np.testing.assert_array_equal(got["input_ids"], ids)
    np.testing.assert_array_equal(got["attention_mask"], mask)
    assert got["input_ids"].dtype == got["attention_mask"].dtype == np.int64
    if with_types:
        np.testing.assert_array_equal(got["token_type_ids"], tt)
    else:
        assert "token_type_ids" not in got
    batch = pad_batch([arrays[i] for i in picked], None, pad, left)  # per-row arrays in
    np.testing.assert_array_equal(batch["input_ids"], ids)
    np.testing.assert_array_equal(batch["attention_mask"], mask)


def test_padding_writes_into_a_given_buffer_and_refuses_a_wrong_one():
    values, offsets, types = flatten([np.arange(1, 4), np.arange(1, 3)], [np.ones(3), np.ones(2)])
    buffer = np.full((3, 2, 3), -1, dtype=np.int64)
    got = pad_spans(values, offsets[:-1], np.diff(offsets), types, 0, False, buffer)
    assert all(np.shares_memory(plane, buffer) for plane in got.values())
    assert buffer[0].tolist() == [[1, 2, 3], [1, 2, 0]] and buffer[2].sum() == 5
    with pytest.raises(ValueError, match="staging buffer"):
        pad_spans(values, offsets[:-1], np.diff(offsets), None, 0, False, buffer)


class PositionRunner:
    """Logits that depend on every real token, its position (from the row's first real token)
    and its type id; the second output is the row's real length. Padding that leaked, a token
    out of place or a row out of order changes them."""

    def __init__(self, left: bool = False, oom_above_tokens: int | None = None) -> None:
        self.left, self.oom_above_tokens = left, oom_above_tokens
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        if self.oom_above_tokens is not None and ids.size > self.oom_above_tokens:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        self.shapes.append(ids.shape)
        first = np.argmax(mask, axis=1) if self.left else np.zeros(len(ids), dtype=np.int64)
        position = np.arange(ids.shape[1])[None, :] - first[:, None] + 1
        weighted = (ids * position * mask).sum(axis=1).astype(np.float64)
        if "token_type_ids" in inputs:
            weighted += 0.5 * (inputs["token_type_ids"] * position * mask).sum(axis=1)
        return np.stack([weighted, mask.sum(axis=1)], axis=1).astype(np.float32)


def _random_rows(seed: int, n: int, longest: int = 120):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, longest, size=n)
    lengths[rng.random(n) < 0.9] += 1  # mostly non-empty; some rows of no tokens
    ids = [rng.integers(1, 1000, size=k).astype(np.int32) for k in lengths]
    types = [rng.integers(0, 2, size=k).astype(np.int8) for k in lengths]
    return ids, types


def _alone(runner: PositionRunner, info: ModelInfo, ids, types) -> np.ndarray:
    """Each row scored alone (a batch of one, no padding at all)."""
    left = info.padding_side == "left"
    return np.concatenate(
        [
            runner(pad_batch([row], None if types is None else [types[i]], info.pad_token_id, left))
            for i, row in enumerate(ids)
        ]
    )


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("with_types", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_from_flat_buffers_equal_each_row_scored_alone(left, with_types, seed):
    info = _info(padding_side="left" if left else "right", pad=3 if left else 0)
    ids, types = _random_rows(seed, 400)
    types = types if with_types else None
    runner = PositionRunner(left)
    engine = ScoringEngine(
        ModelConfig(), info, RuntimeConfig(batch_tokens=1024, max_batch_rows=64), "", runner
    )
    expected = _alone(PositionRunner(left), info, ids, types)
    np.testing.assert_array_equal(engine.score(ids, types), expected)  # per-row arrays in
    values, offsets, type_values = flatten(ids, types)
    np.testing.assert_array_equal(engine.score_flat(values, offsets, type_values), expected)
    subset = np.random.default_rng(seed).permutation(len(ids))[:150]
    got = engine.score_flat(values, offsets, type_values, rows=subset)
    np.testing.assert_array_equal(got, expected[subset])
    assert max(r * w for r, w in runner.shapes) <= 1024 and len(runner.shapes) > 10


def test_out_of_memory_splitting_from_flat_buffers():
    ids, types = _random_rows(5, 300, longest=60)
    ids[17] = np.arange(1, 201, dtype=np.int32)  # a row over the memory for 150 tokens alone
    types[17] = np.zeros(200, dtype=np.int8)
    info = _info()
    runtime = RuntimeConfig(batch_tokens=4096, max_batch_rows=256)
    runner = PositionRunner(oom_above_tokens=150)
    engine = ScoringEngine(ModelConfig(), info, runtime, "", runner)
    values, offsets, type_values = flatten(ids, types)
    got = engine.score_flat(values, offsets, type_values)
    expected = _alone(PositionRunner(), info, ids, types)
    assert engine.unfit == [17] and np.isnan(got[17]).all()
    np.testing.assert_array_equal(np.delete(got, 17, axis=0), np.delete(expected, 17, axis=0))
    assert engine.stats.oom_splits > 0 and engine.max_tokens <= 4096 // 2
    assert max(r * w for r, w in runner.shapes) <= 150
    rows = np.arange(300)[np.arange(300) != 17]  # the next block starts from the lowered budget
    splits = engine.stats.oom_splits
    np.testing.assert_array_equal(
        engine.score_flat(values, offsets, type_values, rows=rows), expected[rows]
    )
    assert engine.stats.oom_splits == splits and engine.unfit == []


def test_windows_from_flat_buffers_keep_each_rows_best():
    counts = np.array([1, 3, 2, 0, 4] * 10 + [10], dtype=np.int64)
    ids, types = _random_rows(3, int(counts.sum()), longest=30)
    info = _info(num_labels=1)

    def runner(inputs):
        return PositionRunner()(inputs)[:, :1]

    engine = ScoringEngine(ModelConfig(), info, RuntimeConfig(batch_tokens=256), "", runner)
    per_window = np.concatenate(
        [runner(pad_batch([r], [t], 0)) for r, t in zip(ids, types, strict=True)]
    )
    starts = np.cumsum(counts) - counts
    expected = np.full((len(counts), 1), np.nan, dtype=np.float32)
    for row, (start, count) in enumerate(zip(starts, counts, strict=True)):
        if count:
            expected[row] = per_window[start : start + count].max(axis=0)
    values, offsets, type_values = flatten(ids, types)
    got = engine.score_windows_flat(values, offsets[:-1], np.diff(offsets), counts, type_values)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(engine.score_windows(ids, types, counts), expected)
    with pytest.raises(ValueError, match="counts add up"):
        engine.score_windows_flat(values, offsets[:-1], np.diff(offsets), counts[:-1])


class StagedRunner:
    """The GPU protocol without a GPU: staging buffers the engine pads into (checked), logits
    handed back as opaque handles, fetched later in one call."""

    def __init__(self, oom_above_tokens: int | None = None) -> None:
        self.inner = PositionRunner(oom_above_tokens=oom_above_tokens)
        self.buffers: list[np.ndarray] = []
        self.fetches: list[int] = []

    def staging(self, planes: int, rows: int, width: int) -> np.ndarray:
        self.buffers.append(np.empty((planes, rows, width), dtype=np.int64))
        return self.buffers[-1]

    def __call__(self, inputs: dict[str, np.ndarray]) -> object:
        assert all(np.shares_memory(a, self.buffers[-1]) for a in inputs.values())
        return ("handle", self.inner(inputs))  # nothing numpy reads as float32 logits

    def fetch(self, outputs: list[object]) -> np.ndarray:
        self.fetches.append(len(outputs))
        return np.concatenate([logits for _, logits in outputs])


def test_a_runner_with_staging_and_fetch_gets_one_fetch_per_block():
    ids, types = _random_rows(7, 500)
    ids[3] = np.arange(1, 301, dtype=np.int32)  # too long alone: NaN, kept among the fetched
    types[3] = np.zeros(300, dtype=np.int8)
    runner = StagedRunner(oom_above_tokens=250)
    engine = ScoringEngine(ModelConfig(), _info(), RuntimeConfig(batch_tokens=4096), "", runner)
    got = engine.score(ids, types)
    expected = _alone(PositionRunner(), _info(), ids, types)
    assert engine.unfit == [3] and np.isnan(got[3]).all()
    np.testing.assert_array_equal(np.delete(got, 3, axis=0), np.delete(expected, 3, axis=0))
    assert runner.fetches == [engine.stats.forward_passes] and engine.stats.oom_splits > 0


# --- TorchRunner's staged path (a GPU's), run on CPU --------------------------------------


@pytest.fixture(scope="module")
def bert(models):
    return str(models[("bert", 3)])


def _torch_engine(folder: str, staged: bool, rows: int = 8):
    from crossenc.engine.torch_runner import TorchRunner
    from crossenc.models.describe import describe_model

    cfg = ModelConfig(dtype="float32", name=folder)
    info = describe_model(cfg)
    runtime = RuntimeConfig(batch_tokens=512, max_batch_rows=rows)
    runner = TorchRunner(cfg, folder, runtime, info.uses_token_type_ids, info)
    runner.staged = staged
    return ScoringEngine(cfg, info, runtime, folder, runner), runner


def test_torch_runner_staged_scores_as_in_place_with_one_copy_per_batch(bert):
    rng = np.random.default_rng(0)
    ids = [rng.integers(5, 90, size=int(k)).astype(np.int64) for k in rng.integers(2, 60, 70)]
    types = [np.zeros(len(r), dtype=np.int64) for r in ids]
    plain, _ = _torch_engine(bert, staged=False)
    staged, runner = _torch_engine(bert, staged=True)
    fetches = []
    fetch = runner.fetch
    runner.fetch = lambda outputs: fetches.append(len(outputs)) or fetch(outputs)
    expected = plain.score(ids, types)
    np.testing.assert_array_equal(staged.score(ids, types), expected)
    passes = staged.stats.forward_passes
    assert runner.copies == passes > 5 and fetches == [passes]
    assert runner._staging.grown <= 2 * 4  # two buffers, reused; grown only when larger
    # A batch that did not come from staging (a caller's own arrays) is packed into one
    inputs = pad_batch(ids[:3], types[:3], 0)
    np.testing.assert_array_equal(runner.fetch([runner(inputs)]), plain.runner(inputs))
    assert runner.copies == passes + 1


def test_staging_buffers_are_reused_in_turn_and_grown():
    from crossenc.engine.torch_runner import Staging

    staging = Staging(pin=False)
    a = staging.take(3, 4, 10)
    b = staging.take(3, 4, 10)
    assert not np.shares_memory(a, b)
    c = staging.take(2, 4, 10)  # smaller: the first slot again, no new buffer
    assert np.shares_memory(a, c) and staging.grown == 2
    slot, host = staging.packed(list(c))
    assert slot == 0 and host.numel() == 80 and host.data_ptr() == c.ctypes.data
    staging.take(3, 64, 100)  # larger: slot 1 grows
    assert staging.grown == 3


# --- the scorer replica on Arrow blocks -----------------------------------------------------


def test_replica_scores_a_block_however_it_is_sliced_or_chunked(models, tmp_path):
    import pyarrow as pa

    from crossenc.engine.replica import ScorerReplica
    from crossenc.models.describe import describe_model
    from crossenc.models.tokenize import ROW, SOURCE, tokenize_batch
    from crossenc.testing import sample_sentences
    from tests.helpers import job_config

    cfg = job_config(tmp_path / "in", tmp_path / "out", models[("bert", 1)])
    info = describe_model(cfg.model, None)
    n = 40
    passages = sample_sentences(n, seed=3, min_words=1, max_words=40)
    passages[5] = None  # a dead letter: no tokens
    block = pa.table(
        {
            "query": sample_sentences(n, seed=4, max_words=8),
            "passage": passages,
            "qid": list(range(n)),
            "doc_id": [f"d{i}" for i in range(n)],
            SOURCE: ["f.parquet"] * n,
            ROW: list(range(n)),
        }
    )
    tokenized = tokenize_batch(block, cfg, info)
    replica = ScorerReplica(cfg, info)
    replica.engine.runner = lambda inputs: PositionRunner()(inputs)[:, :1] / 1e5  # sigmoid: <1
    whole = replica(tokenized).column("score").to_pylist()
    assert whole[5] is None and len(set(whole)) > 30
    chunked = pa.concat_tables([tokenized.slice(0, 7), tokenized.slice(7, 20), tokenized.slice(27)])
    assert chunked.column("_input_ids").num_chunks == 3
    assert replica(chunked).column("score").to_pylist() == whole
    assert replica(tokenized.slice(9, 20)).column("score").to_pylist() == whole[9:29]


def test_local_scorer_scores_through_the_flat_path_as_row_by_row(models):
    folder = str(models[("electra", 1)])
    scorer = LocalScorer(ModelConfig(dtype="float32", name=folder), RuntimeConfig(max_batch_rows=4))
    pairs = [(f"query {i}", "passage words " * (i + 1)) for i in range(9)]
    alone = np.concatenate([scorer.predict([pair]) for pair in pairs])
    np.testing.assert_allclose(scorer.predict(pairs), alone, rtol=0, atol=1e-5)
