"""Finding, fetching and describing a cross-encoder: Hub id, local folder or s3:// folder."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from crossenc.config import ConfigError, JobConfig, ModelConfig
from crossenc.errors import (
    LOCAL_KINDS,
    StorageError,
    find,
    raise_storage,
    storage_errors,
    storage_message,
    storage_problem,
)
from crossenc.storage import check_bucket, is_remote, resolve

# sentence-transformers stores its activation as a dotted class path in the model config.
_ST_ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Softmax": "softmax",
}


def default_cache_dir() -> Path:
    """Where models copied from object stores live on each node."""
    return Path.home() / ".cache" / "crossenc" / "models"


def fetch_remote_model(cfg: ModelConfig, cache_dir: str | None = None) -> str:
    """Copy an s3:// model folder to the node's local cache once; return the local folder.

    Concurrent callers on one node (tokenizer tasks, scorer actors) share one copy: a file
    lock serialises them and the folder appears by an atomic rename only when complete.
    A store problem raises StorageError naming model.storage; a full or unwritable cache,
    one naming runtime.cache_dir.
    """
    with storage_errors("model", cfg.name, cfg.storage):
        loc = resolve(cfg.name, cfg.storage)
        if not loc.fs.isdir(loc.path):
            check_bucket(loc, "model", cfg.storage)  # a missing bucket reads as no folder
            raise ConfigError(f"model.name {cfg.name}: no such folder on the object store")
        listing = sorted(
            (info["name"], info.get("size"), str(info.get("ETag", info.get("mtime", ""))))
            for info in loc.fs.find(loc.path, detail=True).values()
        )
    if not listing:
        raise ConfigError(f"model.name {cfg.name}: the model folder is empty")
    key = hashlib.sha256(json.dumps([cfg.name, listing]).encode()).hexdigest()[:20]
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = root / key
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.is_dir():
                tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}-"))
                try:
                    for name, _, _ in listing:
                        rel = os.path.relpath(name, loc.path)
                        dest = tmp / rel
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        loc.fs.get_file(name, str(dest))
                    os.rename(tmp, target)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    except Exception as err:
        problem = storage_problem(err)
        if problem is not None and problem.kind in LOCAL_KINDS:
            raise_storage(err, "runtime.cache_dir", str(root))  # the local copy
        raise_storage(err, "model", cfg.name, cfg.storage)  # the store, while copying
        raise
    return str(target)


def _looks_like_path(name: str) -> bool:
    """A model.name that can only be a folder: absolute, relative with ./ or ~, or with more
    than one slash (a Hub id is ``name`` or ``owner/name``)."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def model_source(cfg: ModelConfig, cache_dir: str | None = None) -> str:
    """A name or local folder that ``from_pretrained`` can load."""
    if is_remote(cfg.name):
        return fetch_remote_model(cfg, cache_dir)
    local = Path(cfg.name).expanduser()
    if local.exists():
        return str(local.resolve())
    if _looks_like_path(cfg.name):
        raise ConfigError(f"model.name {cfg.name}: no such folder (nor a Hugging Face Hub id)")
    return cfg.name


def _pretrained_kwargs(cfg: ModelConfig, source: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision and not Path(source).exists():
        kwargs["revision"] = cfg.revision
    return kwargs


@lru_cache(maxsize=4)
def _load_tokenizer(source: str, cfg_json: str) -> Any:
    from transformers import AutoTokenizer

    cfg = ModelConfig.model_validate_json(cfg_json)
    tok = AutoTokenizer.from_pretrained(source, **_pretrained_kwargs(cfg, source))
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"model {cfg.name}: crossenc needs a fast (Rust) tokenizer")
    return tok


def load_tokenizer(cfg: ModelConfig, source: str) -> Any:
    """The model's fast tokenizer, loaded once per process."""
    return _load_tokenizer(source, cfg.model_dump_json())


def load_hf_config(cfg: ModelConfig, source: str) -> Any:
    """The model's transformers config."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, **_pretrained_kwargs(cfg, source))


def load_model(cfg: ModelConfig, source: str, dtype: Any = None) -> Any:
    """The sequence-classification model, in eval mode."""
    import torch
    from transformers import AutoModelForSequenceClassification

    kwargs = _pretrained_kwargs(cfg, source)
    if not cfg.allow_pickle_weights:
        kwargs["use_safetensors"] = True
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=dtype or torch.float32, **kwargs
        )
    except OSError as err:
        if not cfg.allow_pickle_weights and "safetensors" in str(err).lower():
            raise ConfigError(
                f"model {cfg.name}: no safetensors weights; pickle weights (*.bin) are refused "
                "unless model.allow_pickle_weights is true"
            ) from err
        raise
    return model.eval()


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


def _st_model_config(cfg: ModelConfig, source: str) -> dict[str, Any]:
    """The model's config_sentence_transformers.json, where it has one."""
    name = "config_sentence_transformers.json"
    path: str | None = str(Path(source) / name)
    if not Path(source).is_dir():
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(source, name, revision=cfg.revision)
        except Exception:  # the file is optional; any failure means "not stored"
            path = None
    if path is None or not Path(path).is_file():
        return {}
    return json.loads(Path(path).read_text())


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


WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
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


def describe_model(cfg: ModelConfig, cache_dir: str | None = None) -> ModelInfo:
    """Load config and tokenizer (not the weights) and work out labels, activation, limits.
    A folder (local, or an s3:// one's copy) is checked for config, weights and tokenizer
    first: a model that cannot score is refused here, before anything starts."""
    source = model_source(cfg, cache_dir)
    if Path(source).is_dir():
        check_model_folder(cfg, source)
    try:
        hf_config = load_hf_config(cfg, source)
        tok = load_tokenizer(cfg, source)
    except (ConfigError, StorageError):
        raise
    except Exception as err:
        worded = None if Path(source).is_dir() else _hub_error(cfg, err)
        if worded is not None:
            raise worded from err
        raise
    num_labels = int(hf_config.num_labels)
    if cfg.labels is not None:
        if len(cfg.labels) != num_labels:
            raise ConfigError(
                f"model.labels has {len(cfg.labels)} names but model {cfg.name} has "
                f"{num_labels} output(s)"
            )
        labels = tuple(cfg.labels)
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
    st_config = _st_model_config(cfg, source) if cfg.activation == "auto" else {}
    activation = resolve_activation(cfg.activation, hf_config, num_labels, st_config)
    if activation == "softmax" and num_labels == 1:
        raise ConfigError(
            f"model.activation softmax on single-output model {cfg.name} would give 1.0 for "
            "every pair; use sigmoid or identity"
        )
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
    )


def check_task(cfg: JobConfig, info: ModelInfo) -> None:
    """Refuse task/model combinations that cannot give the promised output columns."""
    if cfg.task in ("score", "rerank") and info.num_labels != 1:
        raise ConfigError(
            f"task {cfg.task} needs a single-output model, but {cfg.model.name} has "
            f"{info.num_labels} outputs {list(info.labels)}; use task: classify"
        )
    if cfg.task == "classify" and info.num_labels == 1 and cfg.classify.threshold is None:
        raise ConfigError(
            f"task classify with single-output model {cfg.model.name} needs classify.threshold"
        )
    if cfg.task == "classify" and info.num_labels > 1 and cfg.classify.threshold is not None:
        raise ConfigError("classify.threshold applies to single-output models only")


def model_fingerprint(cfg: ModelConfig, info: ModelInfo) -> dict[str, Any]:
    """Name, revision and a hash of the weight files: what identifies the scores' source."""
    digest = hashlib.sha256()
    folder = Path(info.source)
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not folder.is_dir():  # a Hub id: the loaded snapshot's files
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                info.source, revision=cfg.revision, allow_patterns=["*.safetensors", "*.json"]
            )
        )
        weights = sorted(folder.glob("*.safetensors"))
    for path in weights:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):  # noqa: B023
                digest.update(chunk)
    return {
        "name": cfg.name,
        "revision": cfg.revision,
        "weights_sha256": digest.hexdigest(),
        "weight_files": [p.name for p in weights],
        "activation": info.activation,
        "labels": list(info.labels),
        "max_length": info.max_length,
    }
