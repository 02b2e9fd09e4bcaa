"""The pair encoder on the tokenizer's Rust backend encodes as the tokenizer's own call does, a
job's tokenize task builds it from JSON without importing transformers, and the job's read task
tokenizes what it reads as the tokenize stage would."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from crossenc.config import build_config
from crossenc.inputs.read import read_row_groups, read_tokenized, read_units
from crossenc.models.describe import describe_model
from crossenc.models.load import load_tokenizer
from crossenc.models.tokenize import (
    PairEncoder,
    encode_pairs,
    encode_pairs_flat,
    encoder_spec,
    tokenize_batch,
)
from crossenc.testing import (
    ARCHITECTURES,
    COMMUNITY_ARCHITECTURES,
    build_tiny_model,
    sample_sentences,
    write_pairs,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fast-tokenizers")
    archs = ARCHITECTURES + COMMUNITY_ARCHITECTURES
    return {a: build_tiny_model(root / a, a, 1, seed=i) for i, a in enumerate(archs)}


def _pairs() -> tuple[list[str], list[str]]:
    a = sample_sentences(60, seed=5, max_words=30)
    b = sample_sentences(60, seed=6, min_words=1, max_words=300)  # many past max_length
    a += ["A man is eating pizza", "x", "[SEP] [CLS] <s> </s> <pad> tokens"]
    b += ["A man eats something", "y", "special [SEP] words <|endoftext|> here"]
    a[0] = " ".join(["berlin population"] * 200)  # a first text past the limit on its own
    return a, b


def _info(folder: Path, **model: object):
    cfg = build_config(
        {"input": {"path": "in"}, "model": {"name": str(folder), **model}, "output": {"path": "o"}}
    )
    info = describe_model(cfg.model)
    return cfg, info, load_tokenizer(cfg.model, info.source)


def _reference(tok, info, a, b, truncation):
    """What the tokenizer's own call gives: ids, type ids, and whether each pair was cut."""
    enc = tok(
        a,
        b,
        truncation=truncation,
        max_length=info.max_length,
        return_token_type_ids=info.uses_token_type_ids,
    )
    full = tok(a, b, truncation=False)["input_ids"]
    cut = np.array([len(f) > info.max_length for f in full])
    return enc["input_ids"], enc.get("token_type_ids"), cut


@pytest.mark.parametrize("truncation", ["longest_first", "only_first"])
@pytest.mark.parametrize("arch", ARCHITECTURES + COMMUNITY_ARCHITECTURES)
def test_encoder_matches_the_tokenizer_call(folders, arch, truncation):
    _, info, tok = _info(folders[arch], truncation=truncation)
    a, b = _pairs()
    if truncation == "only_first":  # the first text must be the one that can be cut
        a, b = [x + " " + " ".join(["w"] * 40) for x in a], [y[:40] or "q" for y in b]
    ids, types, cut = _reference(tok, info, a, b, truncation)
    encoder = PairEncoder.of(tok)
    assert encoder is not None
    got = encode_pairs_flat(encoder, info, a, b, truncation)
    got_ids, got_types = got.lists()
    assert got_ids == ids
    assert got_types == types  # None for a model without type ids
    np.testing.assert_array_equal(got.truncated, cut)
    assert cut.any() and not cut.all()  # both kinds of row were compared
    # encode_pairs (LocalScorer, plan) goes the same way, as lists
    listed = encode_pairs(tok, info, a, b, truncation)
    assert listed[0] == ids and listed[1] == types
    np.testing.assert_array_equal(listed[2], cut)


def test_encoder_from_spec_equals_the_tokenizer_left_truncation_and_split_specials(folders):
    _, info, tok = _info(folders["bert"])
    a, b = _pairs()
    for side, split in (("right", False), ("left", False), ("right", True)):
        tok.truncation_side, tok.split_special_tokens = side, split
        try:
            ids, types, cut = _reference(tok, info, a, b, "longest_first")
            spec = encoder_spec(tok, info)
            assert spec is not None
            spec = pickle.loads(pickle.dumps(spec))  # as a task receives it
            got = encode_pairs_flat(PairEncoder.from_spec(spec), info, a, b)
        finally:
            tok.truncation_side, tok.split_special_tokens = "right", False
        assert got.lists() == (ids, types), (side, split)
        np.testing.assert_array_equal(got.truncated, cut)
    assert ids != _reference(tok, info, a, b, "longest_first")[0]  # the settings mattered


def test_a_tokenizer_that_encodes_its_own_way_is_called_as_it_is(folders):
    _, info, tok = _info(folders["bert"])

    class Shouting(type(tok)):  # a subclass changing how pairs are encoded
        def _encode_plus(self, text, text_pair=None, **kwargs):
            text = [t.upper() for t in text]
            return super()._encode_plus(text, text_pair, **kwargs)

    tok.__class__ = Shouting
    try:
        assert PairEncoder.of(tok) is None
        assert encoder_spec(tok, info) is None
        a, b = _pairs()
        ids = encode_pairs(tok, info, a, b)[0]
        assert ids == tok(a, b, truncation=True, max_length=info.max_length)["input_ids"]
    finally:
        tok.__class__ = Shouting.__mro__[1]


def _block(a: list, b: list) -> pa.Table:
    n = len(a)
    return pa.table(
        {
            "qid": pa.array(np.arange(n)),
            "query": pa.array(a, pa.string()),
            "passage": pa.array(b, pa.string()),
            "_source": pa.array(["f"] * n),
            "_row": pa.array(np.arange(n)),
        }
    )


@pytest.mark.parametrize("prompt", [None, "Judge: "])
def test_tokenize_batch_is_the_same_through_spec_encoder_and_tokenizer(
    folders, monkeypatch, prompt
):
    cfg, info, tok = _info(folders["bert"], **({"prompt": prompt} if prompt else {}))
    cfg = cfg.model_copy(update={"input": cfg.input.model_copy(update={"keep": ["qid"]})})
    assert info.prompt == prompt
    a, b = _pairs()
    a[3], b[5], a[7] = None, "   ", ""  # dead letters: null, blank, empty
    block = _block(a, b)
    spec = encoder_spec(tok, info)
    fast = tokenize_batch(block, cfg, info, spec)
    own = tokenize_batch(block, cfg, info)  # the loaded tokenizer's encoder
    monkeypatch.setattr(PairEncoder, "of", classmethod(lambda cls, t: None))
    slow = tokenize_batch(block, cfg, info)  # the tokenizer's own call, as before
    assert fast.equals(slow) and own.equals(slow)
    assert fast.schema.field("_input_ids").type == pa.list_(pa.int32())
    assert fast.column("_error").null_count == len(a) - 3
    assert fast.column("truncated").to_numpy().any()


def test_the_tokenize_task_never_imports_transformers(folders, tmp_path):
    cfg, info, tok = _info(folders["roberta"])
    a, b = _pairs()
    path = tmp_path / "task.pkl"
    path.write_bytes(pickle.dumps((_block(a, b), cfg, info, encoder_spec(tok, info))))
    script = textwrap.dedent(
        f"""
        import json, pickle, sys
        from crossenc.models.tokenize import tokenize_batch
        block, cfg, info, spec = pickle.load(open({str(path)!r}, "rb"))
        out = tokenize_batch(block, cfg, info, spec)
        print(json.dumps([out.column("_input_ids").to_pylist(), "transformers" in sys.modules]))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stderr
    ids, imported = json.loads(done.stdout)
    assert not imported
    assert ids == tok(a, b, truncation=True, max_length=info.max_length)["input_ids"]


def test_read_tokenized_is_read_then_tokenize(folders, tmp_path):
    """The job's read task yields what the read stage and the tokenize stage did in turn."""
    write_pairs(tmp_path / "in", rows=250, files=2, seed=3)
    cfg = build_config(
        {
            "input": {"path": str(tmp_path / "in"), "keep": ["qid", "doc_id"]},
            "model": {"name": str(folders["bert"])},
            "output": {"path": str(tmp_path / "out")},
        }
    )
    from crossenc.inputs.plan import plan_job

    plan = plan_job(cfg)
    units = pa.Table.from_pylist(read_units(plan.files))
    args = (units, cfg.input, cfg.needed_columns(), 64)
    tok = load_tokenizer(cfg.model, plan.info.source)
    spec = encoder_spec(tok, plan.info)
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        fused = list(read_tokenized(*args, cfg=cfg, info=plan.info, encoder=spec))
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
    staged = [tokenize_batch(t, cfg, plan.info) for t in read_row_groups(*args, cfg=cfg)]
    assert len(fused) == len(staged) > 2
    assert all(f.equals(s) for f, s in zip(fused, staged, strict=True))
    assert sum(t.num_rows for t in fused) == 250
