"""What a model is, found before anything is loaded: its kind (sequence classification or a
causal-LM reranker), labels, activation, prompt, chat template and limit, from its config and
sentence-transformers' files; and the fingerprint of the files that make its scores."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crossenc.config import ConfigError, ModelConfig
from crossenc.errors import (
    StorageError,
    find,
    storage_message,
    storage_problem,
)
from crossenc.models.load import (
    CAUSAL_LM,
    PICKLE_WEIGHTS,
    SEQUENCE_CLASSIFICATION,
    WEIGHTS,
    check_weights,
    load_hf_config,
    load_tokenizer,
    model_source,
)
from crossenc.storage import is_remote

ST_CONFIG = "config_sentence_transformers.json"  # sentence-transformers' model config


# sentence-transformers stores its activation as a dotted class path in the model config.
_ST_ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Softmax": "softmax",
}


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline needs to know about a model before scoring."""

    source: str
    num_labels: int
    labels: tuple[str, ...]
    activation: str
    max_length: int
    uses_token_type_ids: bool
    pad_token_id: int
    model_type: str
    kind: str = SEQUENCE_CLASSIFICATION
    padding_side: str = "right"  # left for causal LMs: the last position is a real token
    score_tokens: tuple[int, int | None] | None = None  # causal LM: the yes (and no) token ids
    score_words: tuple[str, ...] = ()  # those tokens, as text
    prompt: str | None = None  # prepended to text_a, or the chat template's system message
    chat_template: bool = False  # pairs rendered as query/document messages, as in ST 6
    architecture: str = ""
    # model.quantize int8 on openvino: the (text_a, text_b) pairs its static quantization
    # calibrates on, a seeded sample of the job's input that the driver draws (crossenc.job.gate)
    calibration: tuple[tuple[str, str], ...] = ()
    # the model's files as an exported model's identity (:func:`export_digest`): drawn once by
    # the driver, so that replicas key the ONNX / OpenVINO export cache without rehashing
    digest: str = ""


def _st_file(cfg: ModelConfig, source: str, name: str) -> Any:
    """One of the JSON files sentence-transformers saves with a model (None where absent)."""
    path: str | None = str(Path(source) / name)
    if not Path(source).is_dir():
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(source, name, revision=cfg.revision)
        except Exception:  # the file is optional; any failure means "not stored"
            path = None
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name {cfg.name}: {name} cannot be read ({err})") from None


def _st_model_config(cfg: ModelConfig, source: str) -> dict[str, Any]:
    """The model's config_sentence_transformers.json, where it has one."""
    found = _st_file(cfg, source, ST_CONFIG)
    return found if isinstance(found, dict) else {}


_LOGIT_SCORE = "LogitScore"


def model_kind(hf_config: Any, modules: list[dict[str, Any]]) -> str:
    """Causal LM when sentence-transformers would load it so: a LogitScore module, or a
    ``...ForCausalLM`` architecture; sequence classification otherwise."""
    if any(str(m.get("type", "")).endswith(_LOGIT_SCORE) for m in modules):
        return CAUSAL_LM
    architectures = getattr(hf_config, "architectures", None) or [""]
    return CAUSAL_LM if str(architectures[0]).endswith("ForCausalLM") else SEQUENCE_CLASSIFICATION


def logit_score_tokens(
    cfg: ModelConfig, source: str, modules: list[dict[str, Any]], tok: Any
) -> tuple[int, int | None]:
    """The true (and false) token ids of a causal-LM reranker: its saved LogitScore module's,
    else the tokenizer's single tokens "yes" and "no", as sentence-transformers 6 picks them."""
    for module in modules:
        if str(module.get("type", "")).endswith(_LOGIT_SCORE):
            saved = _st_file(cfg, source, f"{module.get('path', '')}/config.json") or {}
            if "true_token_id" not in saved:
                raise ConfigError(
                    f"model.name {cfg.name}: {module.get('path')}/config.json has no true_token_id"
                )
            false_id = saved.get("false_token_id")
            return int(saved["true_token_id"]), None if false_id is None else int(false_id)
    ids = []
    for word in ("yes", "no"):
        token_id = tok.convert_tokens_to_ids(word)
        if token_id is None or token_id == tok.unk_token_id:
            raise ConfigError(
                f"model.name {cfg.name}: a causal-LM reranker without a saved LogitScore module "
                f"is scored as logit('yes') - logit('no'), but its tokenizer has no single token "
                f"{word!r}; save the model with sentence-transformers' LogitScore naming its tokens"
            )
        ids.append(int(token_id))
    return ids[0], ids[1]


def resolve_prompt(cfg: ModelConfig, st_config: dict[str, Any]) -> str | None:
    """The prompt sentence-transformers would use: model.prompt, else the saved prompt that
    model.prompt_name names, else the saved default_prompt_name's; None for no prompt."""
    if cfg.prompt is not None:
        return cfg.prompt or None
    prompts = st_config.get("prompts") or {}
    if cfg.prompt_name is not None:
        if cfg.prompt_name not in prompts:
            raise ConfigError(
                f"model.prompt_name {cfg.prompt_name}: model {cfg.name} saves no such prompt "
                f"(it has: {', '.join(sorted(prompts)) or 'none'})"
            )
        return prompts[cfg.prompt_name] or None
    default = st_config.get("default_prompt_name")
    return (prompts.get(default) or None) if default else None


# Probe texts: a chat template must carry both texts of a pair into what it renders.
_PROBES = ("\u241eQ0 <a> & {{x}}\u241e", "\u241eD0\u241e", "  q1\n", " d1  ")


def render_chat(tok: Any, prompt: str | None, pairs: list[tuple[str, str]]) -> list[str]:
    """Each pair rendered by the tokenizer's chat template as sentence-transformers 6 renders
    it: a "query" and a "document" message, after a "system" message holding the prompt."""
    head = [{"role": "system", "content": prompt}] if prompt else []
    conversations = [
        [*head, {"role": "query", "content": a}, {"role": "document", "content": b}]
        for a, b in pairs
    ]
    return list(tok.apply_chat_template(conversations, tokenize=False))


def check_chat_template(cfg: ModelConfig, tok: Any, prompt: str | None) -> None:
    """Refuse a chat template that drops the query or the document of a pair."""
    q0, d0, q1, d1 = _PROBES
    try:
        base, query_moved, document_moved = render_chat(tok, prompt, [(q0, d0), (q1, d0), (q0, d1)])
    except Exception as err:  # noqa: BLE001 - any template failure is the model's config
        raise ConfigError(
            f"model.name {cfg.name}: its chat template cannot render a (query, document) pair "
            f"({type(err).__name__}: {err})"
        ) from None
    dropped = [
        role for role, r in (("query", query_moved), ("document", document_moved)) if r == base
    ]
    if dropped:
        raise ConfigError(
            f"model.name {cfg.name}: its chat template does not render the "
            f"{' and '.join(dropped)} text of a pair (sentence-transformers maps a pair to "
            "'query' and 'document' messages); fix chat_template.jinja in the model folder"
        )


def resolve_activation(
    requested: str, hf_config: Any, num_labels: int, st_config: dict[str, Any] | None = None
) -> str:
    """The activation that ``auto`` means: as sentence-transformers' CrossEncoder does.

    The choice stored with the model wins (config_sentence_transformers.json since v5, the
    ``sentence_transformers`` block of config.json in v4, an older top-level key before that);
    else sigmoid for one output and identity for several.
    """
    if requested != "auto":
        return requested
    stored = (st_config or {}).get("activation_fn")
    st = getattr(hf_config, "sentence_transformers", None)
    stored = stored or (st.get("activation_fn") if isinstance(st, dict) else None)
    stored = stored or getattr(hf_config, "sbert_ce_default_activation_function", None)
    if stored in _ST_ACTIVATIONS:
        return _ST_ACTIVATIONS[stored]
    return "sigmoid" if num_labels == 1 else "identity"


# A fast tokenizer loads from tokenizer.json, or is converted from a slow one's vocabulary.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spm.model",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
)


def check_model_folder(cfg: ModelConfig, folder: str) -> None:
    """Refuse a model folder that could not be scored with, before anything starts: no
    config.json, no weights (safetensors; ``*.bin`` only with model.allow_pickle_weights, a
    sharded index with every shard present), or no tokenizer files."""
    root = Path(folder)
    where = f"model.name {cfg.name}" + (f" (copied to {folder})" if is_remote(cfg.name) else "")
    present = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    listed = f"; the folder holds: {', '.join(present[:12]) or 'nothing'}"
    if "config.json" not in present:
        raise ConfigError(f"{where}: no config.json in the model folder{listed}")
    allowed = WEIGHTS + (PICKLE_WEIGHTS if cfg.allow_pickle_weights else ())
    weights = [name for name in allowed if name in present]
    if not weights:
        if any(name in present for name in PICKLE_WEIGHTS) or any(
            name.endswith(".bin") for name in present
        ):
            raise ConfigError(
                f"{where}: no safetensors weights (model.safetensors); pickle weights (*.bin) "
                "are refused unless model.allow_pickle_weights is true"
            )
        raise ConfigError(
            f"{where}: no weights in the model folder (model.safetensors, or "
            f"model.safetensors.index.json with its shards){listed}"
        )
    if weights[0].endswith(".index.json"):
        try:
            shards = set(json.loads((root / weights[0]).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise ConfigError(f"{where}: {weights[0]} cannot be read ({err})") from None
        missing = sorted(name for name in shards if not (root / name).is_file())
        if missing:
            raise ConfigError(
                f"{where}: {weights[0]} lists weight shards that are not there: "
                + ", ".join(missing[:5])
            )
    if not any(name in present for name in TOKENIZER_FILES):
        raise ConfigError(
            f"{where}: no tokenizer files in the model folder (tokenizer.json, or a vocabulary: "
            f"{', '.join(TOKENIZER_FILES[1:])}){listed}"
        )


def _hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) switches the Hub off."""
    return any(
        os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_error(cfg: ModelConfig, err: Exception) -> Exception | None:
    """A Hub id that failed to load, in words: the Hub out of reach (StorageError), or no
    such model or revision (ConfigError); None for other errors."""
    problem = storage_problem(err)
    if problem is not None and problem.kind in ("hub_unreachable", "hub_gated", "unreachable"):
        kind = problem.kind if problem.kind == "hub_gated" else "hub_unreachable"
        if kind == "hub_unreachable" and _hub_offline():
            kind = "hub_offline"
        return StorageError(
            storage_message(replace(problem, kind=kind), "model", cfg.name), "model"
        )
    try:
        import huggingface_hub.errors as hx
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    if find(err, hx.RevisionNotFoundError) is not None:
        return ConfigError(f"model.revision {cfg.revision}: no such revision of {cfg.name}")
    if find(err, (hx.RepositoryNotFoundError, hx.HFValidationError)) is not None:
        return ConfigError(
            f"model.name {cfg.name}: no such model on the Hugging Face Hub, nor a local folder"
        )
    return None


def _code_error(cfg: ModelConfig, err: Exception) -> ConfigError | None:
    """A model that needs its own code, or an architecture this transformers does not know,
    in words; None for other errors."""
    text = str(err)
    if "custom code" in text or "trust_remote_code" in text:
        return ConfigError(
            f"model.name {cfg.name}: the model ships its own Python code (auto_map in its "
            "config.json), which crossenc does not run by default; model.trust_remote_code: true "
            "runs that repository's code on the driver and on every node (review it first)"
        )
    if "does not recognize this architecture" in text or "Unrecognized model" in text:
        return ConfigError(
            f"model.name {cfg.name}: this transformers does not know the model's architecture "
            f"({text.splitlines()[0][:200]}); upgrade transformers, or see docs/models.md for "
            "what crossenc serves"
        )
    return None


def describe_model(cfg: ModelConfig, cache_dir: str | None = None) -> ModelInfo:
    """Load config and tokenizer (not the weights) and work out the model's kind, labels,
    activation, prompt and limits. A folder (local, or an s3:// one's copy) is checked for
    config, weights and tokenizer first, and its checkpoint against the weights its model
    needs: a model that cannot score is refused here, before anything starts."""
    source = model_source(cfg, cache_dir)
    if Path(source).is_dir():
        check_model_folder(cfg, source)
    try:
        hf_config = load_hf_config(cfg, source)
        tok = load_tokenizer(cfg, source)
    except (ConfigError, StorageError):
        raise
    except Exception as err:
        worded = _code_error(cfg, err) or (None if Path(source).is_dir() else _hub_error(cfg, err))
        if worded is not None:
            raise worded from err
        raise
    found = _st_file(cfg, source, "modules.json")
    modules = found if isinstance(found, list) else []
    kind = model_kind(hf_config, modules)
    score_tokens = None
    if kind == CAUSAL_LM:
        if cfg.backend != "torch":
            raise ConfigError(
                f"model.backend {cfg.backend}: model {cfg.name} is a causal-LM reranker, which "
                "crossenc scores with model.backend torch only"
            )
        score_tokens = logit_score_tokens(cfg, source, modules, tok)
    num_labels = 1 if kind == CAUSAL_LM else int(hf_config.num_labels)
    if cfg.labels is not None:
        if len(cfg.labels) != num_labels:
            raise ConfigError(
                f"model.labels has {len(cfg.labels)} names but model {cfg.name} has "
                f"{num_labels} output(s)"
            )
        labels = tuple(cfg.labels)
    elif kind == CAUSAL_LM:
        labels = ("LABEL_0",)
    else:
        id2label = getattr(hf_config, "id2label", None) or {}
        labels = tuple(str(id2label.get(i, f"LABEL_{i}")) for i in range(num_labels))
    if len(set(labels)) != len(labels):
        raise ConfigError(f"model {cfg.name}: label names are not distinct: {labels}")
    limit = int(tok.model_max_length) if tok.model_max_length < 1e9 else 512
    max_pos = getattr(hf_config, "max_position_embeddings", -1) or -1
    if max_pos > 0:
        limit = min(limit, int(max_pos))
    if cfg.max_length is not None:
        limit = min(limit, cfg.max_length)
    st_config = _st_model_config(cfg, source)
    activation = resolve_activation(cfg.activation, hf_config, num_labels, st_config)
    if activation == "softmax" and num_labels == 1:
        raise ConfigError(
            f"model.activation softmax on single-output model {cfg.name} would give 1.0 for "
            "every pair; use sigmoid or identity"
        )
    prompt = resolve_prompt(cfg, st_config)
    chat = getattr(tok, "chat_template", None) is not None
    if chat:
        check_chat_template(cfg, tok, prompt)
    if Path(source).is_dir():  # a Hub id's weights are checked where the replica loads them
        check_weights(cfg, source, kind)
    architectures = getattr(hf_config, "architectures", None) or []
    return ModelInfo(
        source=source,
        num_labels=num_labels,
        labels=labels,
        activation=activation,
        max_length=limit,
        uses_token_type_ids="token_type_ids" in tok.model_input_names
        and getattr(hf_config, "type_vocab_size", 2) > 1,
        pad_token_id=int(tok.pad_token_id if tok.pad_token_id is not None else 0),
        model_type=str(hf_config.model_type),
        kind=kind,
        padding_side="left" if kind == CAUSAL_LM else str(tok.padding_side),
        score_tokens=score_tokens,
        score_words=tuple(
            str(tok.convert_ids_to_tokens(i)) for i in (score_tokens or ()) if i is not None
        ),
        prompt=prompt,
        chat_template=chat,
        architecture=str(architectures[0]) if architectures else "",
    )


# The files that turn a pair's texts into token ids: the tokenizer's (vocabulary, merges,
# sentencepiece model, normaliser and pre-tokeniser settings, special and added tokens), the chat
# template, and sentence-transformers' config (its prompts only: the rest is its save's versions).
TOKEN_ID_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
    "*.tiktoken",
    "chat_template.jinja",
    "chat_template.json",
    "additional_chat_templates/*.jinja",
    ST_CONFIG,
)


_ST_PROMPT_KEYS = ("prompts", "default_prompt_name")


def _sha256(paths: list[Path], named: bool = False) -> str:
    """SHA-256 of the files' bytes, one after the other (``named``: each after its name and
    size, so that moving bytes from one file to the next changes it)."""
    digest = hashlib.sha256()
    for path in paths:
        data = None
        if path.name == ST_CONFIG:  # only the prompts change token ids
            st_config = json.loads(path.read_bytes())
            data = json.dumps({k: st_config.get(k) for k in _ST_PROMPT_KEYS}, sort_keys=True)
        if named:
            size = len(data) if data is not None else path.stat().st_size
            digest.update(f"{path.name}\0{size}\0".encode())
        if data is not None:
            digest.update(data.encode())
            continue
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):  # noqa: B023
                digest.update(chunk)
    return digest.hexdigest()


def tokenizer_files(folder: Path) -> list[Path]:
    """The model folder's :data:`TOKEN_ID_FILES` that exist, sorted by path."""
    return sorted({p for pattern in TOKEN_ID_FILES for p in folder.glob(pattern) if p.is_file()})


def _model_files(cfg: ModelConfig, info: ModelInfo) -> tuple[Path, list[Path]]:
    """The model's folder and weight files: a local folder's, or a Hub id's loaded snapshot
    (weights, JSON files and the files that make token ids)."""
    folder = Path(info.source)
    if folder.is_dir():
        return folder, sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    from huggingface_hub import snapshot_download

    patterns = ["*.safetensors", "*.json", *TOKEN_ID_FILES]
    folder = Path(snapshot_download(info.source, revision=cfg.revision, allow_patterns=patterns))
    return folder, sorted(folder.glob("*.safetensors"))


def fingerprint_and_digest(cfg: ModelConfig, info: ModelInfo) -> tuple[dict[str, Any], str]:
    """:func:`model_fingerprint` and :func:`export_digest`, the weights hashed once."""
    folder, weights = _model_files(cfg, info)
    fingerprint = _fingerprint(cfg, info, folder, weights)
    config = folder / "config.json"
    parts = [
        fingerprint["weights_sha256"],
        fingerprint["tokenizer_sha256"],
        _sha256([config]) if config.is_file() else "",
    ]
    return fingerprint, hashlib.sha256("\0".join(parts).encode()).hexdigest()


def export_digest(cfg: ModelConfig, info: ModelInfo) -> str:
    """The model's weights, token-id files and config.json as one hash: what identifies an
    export of it, wherever its folder lies (a local folder or a Hub snapshot of the same
    files share one). ``info.digest`` where the driver has drawn it."""
    return info.digest or fingerprint_and_digest(cfg, info)[1]


def with_digest(cfg: ModelConfig, info: ModelInfo) -> ModelInfo:
    """``info`` with its :func:`export_digest` drawn, so that the export keys built from it
    (an int8 model's and the float32 export it starts from) hash the model's files once."""
    return info if info.digest else replace(info, digest=export_digest(cfg, info))


def model_fingerprint(cfg: ModelConfig, info: ModelInfo) -> dict[str, Any]:
    """Name, revision, a hash of the weight files and one of the files that make the token
    ids (:data:`TOKEN_ID_FILES`): what identifies the scores' source."""
    return _fingerprint(cfg, info, *_model_files(cfg, info))


def _fingerprint(
    cfg: ModelConfig, info: ModelInfo, folder: Path, weights: list[Path]
) -> dict[str, Any]:
    tokenizer = tokenizer_files(folder)
    return {
        "name": cfg.name,
        "revision": cfg.revision,
        "weights_sha256": _sha256(weights),
        "weight_files": [p.name for p in weights],
        "tokenizer_sha256": _sha256(tokenizer, named=True),
        "tokenizer_files": [p.relative_to(folder).as_posix() for p in tokenizer],
        "activation": info.activation,
        "labels": list(info.labels),
        "max_length": info.max_length,
        # how the pairs reach the model, where it is not the plain pair (so older runs match)
        **({"kind": info.kind} if info.kind != SEQUENCE_CLASSIFICATION else {}),
        **({"prompt": info.prompt} if info.prompt else {}),
        **({"chat_template": True} if info.chat_template else {}),
    }
