"""Finding, fetching and describing a cross-encoder: Hub id, local folder or s3:// folder."""

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
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from crossenc.config import ConfigError, ModelConfig
from crossenc.errors import (
    LOCAL_KINDS,
    StorageError,
    find,
    raise_storage,
    storage_errors,
    storage_message,
    storage_problem,
)
from crossenc.storage import Location, check_bucket, is_remote, resolve

log = logging.getLogger(__name__)

ST_CONFIG = "config_sentence_transformers.json"  # sentence-transformers' model config
# sentence-transformers stores its activation as a dotted class path in the model config.
_ST_ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Softmax": "softmax",
}


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
                f"{kind} model ({err}); see the README's model table for what crossenc serves"
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
            f"({text.splitlines()[0][:200]}); upgrade transformers, or see the README's model "
            "table for what crossenc serves"
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


def model_fingerprint(cfg: ModelConfig, info: ModelInfo) -> dict[str, Any]:
    """Name, revision, a hash of the weight files and one of the files that make the token
    ids (:data:`TOKEN_ID_FILES`): what identifies the scores' source."""
    folder = Path(info.source)
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not folder.is_dir():  # a Hub id: the loaded snapshot's files
        from huggingface_hub import snapshot_download

        patterns = ["*.safetensors", "*.json", *TOKEN_ID_FILES]
        folder = Path(
            snapshot_download(info.source, revision=cfg.revision, allow_patterns=patterns)
        )
        weights = sorted(folder.glob("*.safetensors"))
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
