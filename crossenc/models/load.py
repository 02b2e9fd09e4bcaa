"""Finding, fetching and loading a cross-encoder (Hub id, local folder or s3:// folder): its
tokenizer, its config, and its weights, checked for missing ones before they are loaded."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from crossenc.config import ConfigError, ModelConfig
from crossenc.errors import (
    LOCAL_KINDS,
    raise_storage,
    storage_errors,
    storage_problem,
)
from crossenc.storage import Location, check_bucket, is_remote, resolve

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Where models copied from object stores live on each node."""
    return Path.home() / ".cache" / "crossenc" / "models"


def list_remote_model(cfg: ModelConfig) -> tuple[Location, list[tuple[str, Any, str]]]:
    """An s3:// model folder resolved, and its files (path, size, ETag), in path order; raises
    ConfigError for no such folder or an empty one, StorageError (naming model.name) for a
    store that cannot be reached or read."""
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
    return loc, listing


def fetch_remote_model(cfg: ModelConfig, cache_dir: str | None = None) -> str:
    """Copy an s3:// model folder to the node's local cache once; return the local folder.

    Concurrent callers on one node (tokenizer tasks, scorer actors) share one copy: a file
    lock serialises them and the folder appears by an atomic rename only when complete.
    A store problem raises StorageError naming model.storage; a full or unwritable cache,
    one naming runtime.cache_dir.
    """
    loc, listing = list_remote_model(cfg)
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


SEQUENCE_CLASSIFICATION = "sequence-classification"
CAUSAL_LM = "causal-lm"  # scored as sentence-transformers' LogitScore: last position, yes - no


def _model_class(kind: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if kind == CAUSAL_LM else AutoModelForSequenceClassification


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No load report or progress bar from transformers: crossenc words what matters itself."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _missing_weights_error(cfg: ModelConfig, kind: str, missing: list[str]) -> ConfigError:
    head = all(name.split(".")[0] in ("classifier", "score", "pre_classifier") for name in missing)
    why = (
        "the folder holds a model without a sequence-classification head (a base or embedding "
        "model, or a language model saved without its LogitScore): point model.name at a "
        "cross-encoder or reranker checkpoint"
        if head and kind == SEQUENCE_CLASSIFICATION
        else "the checkpoint does not match its config.json"
    )
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return ConfigError(
        f"model.name {cfg.name}: the checkpoint lacks {len(missing)} weight(s) that a "
        f"{kind} model needs ({shown}); loading would initialise them at random, so nothing is "
        f"scored with them. {why[0].upper()}{why[1:]}"
    )


def _load(cfg: ModelConfig, source: str, kind: str, **extra: Any) -> tuple[Any, list[str]]:
    """from_pretrained with crossenc's safety options; the model and its missing weights."""
    kwargs = _pretrained_kwargs(cfg, source)
    if not cfg.allow_pickle_weights:
        kwargs["use_safetensors"] = True
    try:
        with _quiet_transformers():
            model, loading = _model_class(kind).from_pretrained(
                source, output_loading_info=True, **kwargs, **extra
            )
    except OSError as err:
        if not cfg.allow_pickle_weights and "safetensors" in str(err).lower():
            raise ConfigError(
                f"model {cfg.name}: no safetensors weights; pickle weights (*.bin) are refused "
                "unless model.allow_pickle_weights is true"
            ) from err
        raise
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise ConfigError(
                f"model.name {cfg.name}: transformers cannot load this architecture as a "
                f"{kind} model ({err}); see docs/models.md for what crossenc serves"
            ) from None
        raise
    return model, sorted(loading.get("missing_keys") or ())


def checkpoint_names(folder: str) -> set[str]:
    """The tensor names a model folder's checkpoint holds, read without loading a tensor: from
    the sharded index, else each safetensors file's header (``*.bin``: loaded on the meta
    device, with model.allow_pickle_weights only)."""
    root = Path(folder)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (root / index).is_file():
            return set(json.loads((root / index).read_text())["weight_map"])
    names: set[str] = set()
    for path in sorted(root.glob("*.safetensors")):
        with open(path, "rb") as f:  # 8 bytes of header length, then the JSON header
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        names.update(k for k in header if k != "__metadata__")
    if not names and (root / "pytorch_model.bin").is_file():
        import torch

        state = torch.load(root / "pytorch_model.bin", map_location="meta", weights_only=True)
        names.update(state)
    return names


def expected_weights(cfg: ModelConfig, source: str, kind: str) -> tuple[list[list[str]], str]:
    """The parameters a model of this kind needs, built from its config on the meta device
    (no checkpoint is read): one list of names per parameter (tied weights share one), less
    those transformers lets a checkpoint omit; and the model's base prefix."""
    import re

    import torch

    hf_config = load_hf_config(cfg, source)
    with torch.device("meta"), _quiet_transformers():
        model = _model_class(kind).from_config(hf_config, trust_remote_code=cfg.trust_remote_code)
    lenient = getattr(model, "_keys_to_ignore_on_load_missing", None) or ()
    optional = [re.compile(p) for p in lenient]
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    needed = [
        names for names in groups.values() if not any(p.search(n) for p in optional for n in names)
    ]
    return needed, str(getattr(model, "base_model_prefix", "") or "")


_HEADS = ("classifier", "score", "pre_classifier")


def missing_weights(needed: list[list[str]], prefix: str, held: set[str]) -> list[str]:
    """The needed parameters (first name of each) that a checkpoint holding ``held`` lacks,
    with transformers' own leniencies: legacy LayerNorm ``gamma``/``beta`` names, and a
    checkpoint saved from the base model (no ``prefix.``), whose weights load under it."""
    held = {
        n.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        for n in held
    }
    bare = bool(prefix) and not any(n.startswith(prefix + ".") for n in held)

    def present(name: str) -> bool:
        if name in held:
            return True
        return bare and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in held

    return sorted(names[0] for names in needed if not any(present(n) for n in names))


def check_weights(cfg: ModelConfig, source: str, kind: str) -> None:
    """Refuse a checkpoint that lacks weights its model needs (a missing classifier head, a
    base model saved as a cross-encoder), before anything is scored.

    The checkpoint's tensor names (safetensors headers) are compared with the parameters of
    the model built from its config on the meta device; no weight is read, and no loading path
    of transformers' that a release may change is taken. A head that is plainly absent is
    refused at once; any other difference is confirmed by loading the checkpoint for real (a
    renaming this check does not know must not refuse a good model). Should the check itself
    fail, it says so in a warning and the run goes on: :func:`load_model` refuses missing
    weights again where the replica loads them, so a random head is never scored."""
    try:
        needed, prefix = expected_weights(cfg, source, kind)
        held = checkpoint_names(source)
        missing = missing_weights(needed, prefix, held)
    except Exception as err:  # the pre-check must never be what stops a run
        log.warning(
            "model.name %s: the early check for missing weights could not run (%s: %s); going "
            "on: the replicas refuse missing weights when they load the model",
            cfg.name,
            type(err).__name__,
            err,
        )
        return
    if not missing:
        return
    roots = {name.split(".")[0] for name in missing}
    plain = roots <= set(_HEADS) and not any(n.split(".")[0] in roots for n in held)
    if not plain:  # confirm by loading: only what transformers itself reports missing counts
        _, missing = _load(cfg, source, kind)
    if missing:
        raise _missing_weights_error(cfg, kind, missing)


def load_model(
    cfg: ModelConfig, source: str, dtype: Any = None, kind: str = SEQUENCE_CLASSIFICATION
) -> Any:
    """The model of its kind (sequence classification or causal LM), in eval mode; refused
    when loading reports weights that the checkpoint lacks."""
    import torch

    model, missing = _load(cfg, source, kind, dtype=dtype or torch.float32)
    if missing:
        raise _missing_weights_error(cfg, kind, missing)
    return model.eval()


WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
