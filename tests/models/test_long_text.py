"""model.long_text chunk: a pair longer than the model's limit is scored as overlapping windows
of its second text, each paired with the whole first text, and keeps its best window (MaxP).

The reference here builds every window by hand from the texts' own token ids (the pair's
special tokens laid out as the tokenizer lays out the whole pair) and scores each one alone
with transformers; crossenc must agree with it, through LocalScorer, the job and the scorer.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import crossenc
from crossenc.cli import EXIT_CONFIG, EXIT_OK, main
from crossenc.config import ConfigError, ModelConfig, build_config
from crossenc.engine.scoring import LocalScorer, ScoringEngine
from crossenc.models.describe import describe_model
from crossenc.models.tokenize import encode_windows
from crossenc.testing import NLI_LABELS, build_tiny_model, sample_sentences
from tests.helpers import read_output

LIMIT = 64  # the tiny models' max_length: passages of 4-10x this are cheap
OVERLAP = 16
ARCHS = ("bert", "roberta", "deberta-v2")


@pytest.fixture(scope="module")
def short_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("long-text-models")
    out = {arch: build_tiny_model(root / arch, arch, 1, seed=3, max_length=LIMIT) for arch in ARCHS}
    out["nli"] = build_tiny_model(root / "nli", "bert", 3, NLI_LABELS, seed=4, max_length=LIMIT)
    out["chat"] = build_tiny_model(
        root / "chat",
        "bert",
        1,
        seed=5,
        max_length=LIMIT,
        chat_template="{{ messages[0]['content'] }} {{ messages[1]['content'] }}",
    )
    return out


def _chunk(path: Path, **extra: object) -> ModelConfig:
    return ModelConfig(
        dtype="float32", name=str(path), long_text="chunk", chunk_overlap=OVERLAP, **extra
    )


# --- the reference: windows built by hand, each scored alone with transformers -------------


class Reference:
    def __init__(self, path: Path) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()

    def windows(self, a: str, b: str) -> list[tuple[list[int], list[int] | None]] | None:
        """The pair's windows (ids, type ids), or None where text_a leaves too little room
        (crossenc then truncates the row)."""
        full = self.tok(a, b)  # untruncated: the layout of the pair's special tokens
        ids, types = full["input_ids"], full.get("token_type_ids")
        if len(ids) <= LIMIT:
            return [(ids, types)]
        a_ids = self.tok(a, add_special_tokens=False)["input_ids"]
        b_ids = self.tok(b, add_special_tokens=False)["input_ids"]
        la, lb = len(a_ids), len(b_ids)
        assert any(ids[p : p + la] == a_ids for p in range(4))
        tail = next(s for s in range(4) if ids[len(ids) - s - lb : len(ids) - s] == b_ids)
        specials = len(ids) - la - lb
        window = LIMIT - specials
        room = window - la  # tokens of text_b beside the whole text_a
        if room < max(2 * OVERLAP, math.ceil(window / 4)):
            return None
        before = ids[: len(ids) - tail - lb]  # specials, text_a, the specials between
        after = ids[len(ids) - tail :]
        out = []
        start = 0
        while True:
            piece = b_ids[start : start + room]
            w_ids = before + piece + after
            w_types = None
            if types is not None:
                b_type = types[len(before)]
                w_types = types[: len(before)] + [b_type] * len(piece) + types[len(ids) - tail :]
            out.append((w_ids, w_types))
            if start + room >= lb:
                return out
            start += room - OVERLAP  # consecutive windows share OVERLAP tokens of text_b

    def score(self, window: tuple[list[int], list[int] | None]) -> float:
        import torch

        ids, types = window
        inputs = {"input_ids": torch.tensor([ids])}
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if types is not None:
            inputs["token_type_ids"] = torch.tensor([types])
        with torch.no_grad():
            logit = self.model(**inputs).logits[0, 0]
        return float(torch.sigmoid(logit))


def _long_pairs(ref: Reference, seed: int) -> tuple[list[tuple[str, str]], list[str]]:
    """Pairs that fit, that need 2 windows, 4 or more, a row whose text_a alone exceeds the
    limit, and one whose text_a leaves too little room: with what each is."""
    queries = sample_sentences(40, seed=seed, min_words=2, max_words=6)
    words = " ".join(sample_sentences(60, seed=seed * 100)).split()
    passages = [" ".join(words[:k]) for k in range(10, len(words), 9)]
    pairs, kinds = [(queries[0], sample_sentences(1, seed=seed)[0])], ["fits"]
    wanted = {
        "2 windows": lambda n: n == 2,
        "4+ windows": lambda n: 4 <= n <= 6,
        "10x the limit": lambda n: n >= 14,
    }
    for q, p in zip(itertools.cycle(queries[1:]), passages, strict=False):
        n = len(ref.windows(q, p) or ())
        for kind, test in list(wanted.items()):
            if test(n):
                pairs.append((q, p))
                kinds.append(kind)
                del wanted[kind]
    assert not wanted, f"no sample pair for {list(wanted)}"
    lengths = [len(ref.tok(p, add_special_tokens=False)["input_ids"]) for _, p in pairs]
    assert max(lengths) >= 6 * LIMIT  # passages many times the limit
    longest = " ".join(sample_sentences(12, seed=seed + 1))
    pairs.append((longest, passages[20]))  # text_a alone does not fit
    kinds.append("text_a too long")
    first_words = longest.split()
    sizes = [len(ref.tok(" ".join(first_words[:k]))["input_ids"]) for k in range(len(first_words))]
    k = next(k for k, n in enumerate(sizes) if 36 <= n <= 50)
    pairs.append((" ".join(first_words[:k]), passages[30]))  # a window of under 32 tokens
    kinds.append("text_a leaves too little room")
    assert ref.windows(*pairs[-1]) is None and ref.windows(*pairs[-2]) is None
    return pairs, kinds


@pytest.mark.parametrize("arch", ARCHS)
def test_local_scorer_chunk_is_the_best_window_of_the_reference(short_models, arch):
    ref = Reference(short_models[arch])
    pairs, kinds = _long_pairs(ref, seed=ARCHS.index(arch) + 1)
    chunk = LocalScorer(_chunk(short_models[arch]))
    truncate = LocalScorer(ModelConfig(dtype="float32", name=str(short_models[arch])))
    assert chunk.info.activation == "sigmoid" and chunk.info.max_length == LIMIT
    got, plain = chunk.predict(pairs), truncate.predict(pairs)
    _, _, truncated, counts = encode_windows(
        chunk.tokenizer,
        chunk.info,
        [a for a, _ in pairs],
        [b for _, b in pairs],
        overlap=OVERLAP,
    )
    for i, ((a, b), kind) in enumerate(zip(pairs, kinds, strict=True)):
        windows = ref.windows(a, b)
        if windows is None:  # falls back to the ordinary truncation
            assert counts[i] == 1 and truncated[i], kind
            assert got[i] == pytest.approx(plain[i], abs=1e-6), kind
            continue
        assert counts[i] == len(windows) and not truncated[i], kind
        best = max(ref.score(w) for w in windows)
        assert got[i] == pytest.approx(best, abs=1e-5), kind
        if kind == "fits":
            assert got[i] == pytest.approx(plain[i], abs=1e-6)
    assert [counts[kinds.index(k)] for k in ("fits", "2 windows")] == [1, 2]
    assert counts[kinds.index("4+ windows")] >= 4
    several = [kinds.index(k) for k in ("2 windows", "4+ windows", "10x the limit")]
    assert np.abs(got[several] - plain[several]).max() > 1e-4  # MaxP is not the truncated pair


def test_chunk_windows_take_the_prompt_before_text_a(short_models):
    ref = Reference(short_models["bert"])
    pairs, _ = _long_pairs(ref, seed=9)
    pairs = pairs[:3]
    prompt = "Query: "
    got = LocalScorer(_chunk(short_models["bert"], prompt=prompt)).predict(pairs)
    for (a, b), score in zip(pairs, got, strict=True):
        windows = ref.windows(prompt + a, b)
        assert windows is not None
        assert score == pytest.approx(max(ref.score(w) for w in windows), abs=1e-5)


def test_a_row_is_unscored_when_one_of_its_windows_does_not_fit_alone(short_models):
    """score_windows: max per row over the flattened windows; a window that runs out of memory
    even alone leaves its whole row NaN, listed in unfit by row."""
    cfg = ModelConfig(dtype="float32", name=str(short_models["roberta"]))
    info = describe_model(cfg)

    def runner(inputs: dict[str, np.ndarray]) -> np.ndarray:
        if inputs["input_ids"].shape[1] > 5:
            raise MemoryError
        real = inputs["input_ids"] * inputs["attention_mask"]  # padding left out
        return real.sum(axis=1, keepdims=True).astype(np.float32) / 100

    from crossenc.config import RuntimeConfig

    engine = ScoringEngine(cfg, info, RuntimeConfig(), info.source, runner=runner)
    rows = [[[1, 2], [5], [3, 3]], [[4]], [[1, 1, 1, 1, 1, 1], [9]], [[2, 2, 2]]]
    ids = [np.asarray(w) for row in rows for w in row]
    scores = engine.score_windows(ids, None, [len(r) for r in rows])[:, 0]
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert scores[[0, 1, 3]] == pytest.approx([sigmoid(0.06), sigmoid(0.04), sigmoid(0.06)])
    assert math.isnan(scores[2]) and engine.unfit == [2]


# --- the job and the scorer ---------------------------------------------------------------


def _write_long_input(folder: Path, ref: Reference) -> list[tuple[str, str]]:
    pairs, _ = _long_pairs(ref, seed=1)
    extra = [
        (q, " ".join(sample_sentences(k, seed=50 + k)))
        for k, q in enumerate(sample_sentences(12, seed=5, max_words=8), start=1)
    ]
    pairs = pairs + extra
    folder.mkdir(parents=True)
    table = pa.table(
        {
            "qid": [i // 4 for i in range(len(pairs) + 1)],
            "doc_id": list(range(len(pairs) + 1)),
            "query": [a for a, _ in pairs] + ["a query"],
            "passage": [b for _, b in pairs] + [None],  # a dead letter
        }
    )
    pq.write_table(table.slice(0, 10), folder / "part-0.parquet")
    pq.write_table(table.slice(10), folder / "part-1.parquet")
    return pairs


def _score(model: Path, data: Path, out: Path, *overrides: str) -> int:
    config = out.parent / f"{out.name}.yaml"
    config.write_text(
        f"input: {{path: '{data}', text_a: query, text_b: passage, keep: [qid, doc_id]}}\n"
        f"model: {{name: '{model}', dtype: float32}}\n"
        f"output: {{path: '{out}', max_dead_letter_fraction: 0.5}}\n"
    )
    return main(["score", "--config", str(config), *(a for o in overrides for a in ("--set", o))])


@pytest.mark.slow
def test_the_job_writes_windows_and_the_local_scorers_maxp(ray_local, short_models, tmp_path):
    model = short_models["bert"]
    pairs = _write_long_input(tmp_path / "data", Reference(model))
    chunk_sets = ("model.long_text=chunk", f"model.chunk_overlap={OVERLAP}")
    assert _score(model, tmp_path / "data", tmp_path / "chunked", *chunk_sets) == EXIT_OK
    assert _score(model, tmp_path / "data", tmp_path / "truncated") == EXIT_OK

    local = LocalScorer(_chunk(model))
    want = local.predict(pairs)
    _, _, counts = local.encode(pairs)
    got = read_output(tmp_path / "chunked")
    assert got.column_names == ["qid", "doc_id", "score", "windows", "truncated"]
    assert got.schema.field("windows").type == pa.int32()
    assert got.num_rows == len(pairs)
    rows = {r["doc_id"]: r for r in got.to_pylist()}
    for i in range(len(pairs)):
        assert rows[i]["windows"] == counts[i]
        assert rows[i]["score"] == pytest.approx(float(want[i]), abs=1e-5)
    assert max(counts) >= 4 and 2 in counts and 1 in counts
    assert sum(r["truncated"] for r in rows.values()) == 2  # the two rows that fall back
    dead = read_output(tmp_path / "chunked" / "_dead_letter")
    assert dead.num_rows == 1 and dead.column("windows").to_pylist() == [0]

    plain = read_output(tmp_path / "truncated")  # truncate mode: as before, no windows
    assert plain.column_names == ["qid", "doc_id", "score", "truncated"]
    truncate_scores = LocalScorer(ModelConfig(dtype="float32", name=str(model))).predict(pairs)
    for r in plain.to_pylist():
        assert r["score"] == pytest.approx(float(truncate_scores[r["doc_id"]]), abs=1e-5)
    assert sum(r["truncated"] for r in plain.to_pylist()) > 2


@pytest.mark.slow
def test_the_scorer_adds_windows_in_chunk_mode(ray_local, short_models, tmp_path):
    model = short_models["roberta"]
    pairs, _ = _long_pairs(Reference(model), seed=2)
    rows = [{"id": i, "query": a, "passage": b} for i, (a, b) in enumerate(pairs)]
    section = {
        "name": str(model),
        "long_text": "chunk",
        "chunk_overlap": OVERLAP,
        "dtype": "float32",
    }
    score = crossenc.scorer({"model": section, "input": {"keep": ["id"]}})
    out = sorted(score(ray_local.data.from_items(rows)).take_all(), key=lambda r: r["id"])
    assert list(out[0]) == ["id", "score", "windows", "truncated", "reason"]
    local = LocalScorer(_chunk(model))
    _, _, counts = local.encode(pairs)
    assert [r["windows"] for r in out] == list(counts)
    assert [r["score"] for r in out] == pytest.approx(list(local.predict(pairs)), abs=1e-5)
    plain = crossenc.scorer({"model": {"name": str(model)}, "input": {"keep": ["id"]}})
    assert "windows" not in plain(ray_local.data.from_items(rows[:2])).take_all()[0]


# --- refused configs ----------------------------------------------------------------------


def test_chunk_refuses_multi_output_models(short_models):
    with pytest.raises(ConfigError, match="long_text chunk.*single-output model.*3 outputs"):
        crossenc.scorer(
            {"model": {"name": str(short_models["nli"]), "long_text": "chunk"}, "task": "classify"}
        )
    with pytest.raises(ConfigError, match="single-output"):
        LocalScorer(_chunk(short_models["nli"]))
    # a single-output classify (with a threshold) is fine
    crossenc.scorer(
        {
            "model": {"name": str(short_models["bert"]), "long_text": "chunk", "chunk_overlap": 8},
            "task": "classify",
            "classify": {"threshold": 0.5},
        }
    )


def test_chunk_refuses_chat_template_models(short_models, tmp_path, capsys):
    with pytest.raises(ConfigError, match="model.long_text chunk.*chat template"):
        crossenc.scorer({"model": {"name": str(short_models["chat"]), "long_text": "chunk"}})
    with pytest.raises(ConfigError, match="chat template"):
        LocalScorer(_chunk(short_models["chat"]))
    crossenc.scorer({"model": {"name": str(short_models["chat"])}})  # truncate: as before


def test_chunk_refuses_an_overlap_of_half_the_window(short_models, tmp_path, capsys):
    model = short_models["bert"]  # window: 64 less 3 special tokens = 61
    with pytest.raises(ConfigError, match="chunk_overlap 31 must be under half the window"):
        crossenc.scorer({"model": {"name": str(model), "long_text": "chunk", "chunk_overlap": 31}})
    crossenc.scorer({"model": {"name": str(model), "long_text": "chunk", "chunk_overlap": 30}})
    with pytest.raises(ConfigError, match="chunk_overlap 64 must be under half of max_length"):
        section = {"name": "x", "long_text": "chunk", "chunk_overlap": 64, "max_length": 64}
        build_config({"input": {"path": "in"}, "output": {"path": "out"}, "model": section})
    # the CLI: exit 2, naming the key; before anything is scored
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"query": ["q"], "passage": ["p"]}), tmp_path / "data" / "a.parquet")
    config = tmp_path / "job.yaml"
    config.write_text(
        f"input: {{path: '{tmp_path / 'data'}'}}\nmodel: {{name: '{model}', long_text: chunk}}\n"
        f"output: {{path: '{tmp_path / 'out'}'}}\n"
    )
    overlap_64 = ["--set", "model.chunk_overlap=64"]
    assert main(["validate", "--config", str(config), *overlap_64]) == EXIT_CONFIG
    assert "model.chunk_overlap 64" in capsys.readouterr().err
    assert main(["validate", "--config", str(config), "--set", "model.chunk_overlap=8"]) == 0
    # the default fits the model: an eighth of its window (64 for windows of 512 and more)
    assert main(["validate", "--config", str(config)]) == 0
