"""Checks made before any scoring: input files, their schemas and row counts, model and task."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from crossenc.config import ConfigError, JobConfig
from crossenc.errors import (
    InputError,
    StorageError,
    model_storage_hint,
    raise_storage,
    storage_errors,
)
from crossenc.models.describe import ModelInfo, describe_model
from crossenc.storage import Location, check_bucket, check_writable, list_parquet_files, resolve
from crossenc.tasks import check_task
from crossenc.testing.failpoints import failpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputFile:
    """One input Parquet file, its row count and its row groups' sizes, from the footer."""

    path: str
    rows: int
    row_groups: tuple[int, ...] = ()
    group_range: tuple[Any, Any] | None = None  # rerank: the group column's min and max


def group_range(meta: pq.FileMetaData, column: str) -> tuple[Any, Any] | None:
    """The min and max of a column over a file's row groups, from the footer's statistics;
    None when some row group has none (or holds nulls: a null group spans files freely)."""
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    if column not in names:
        return None
    index = names.index(column)
    lo = hi = None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(index).statistics
        if stats is None or not stats.has_min_max or (stats.null_count or 0) > 0:
            return None
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    return None if lo is None else (lo, hi)


def groups_within_files(files: tuple[InputFile, ...] | list[InputFile]) -> bool:
    """True when no two files' group-key ranges overlap, so no group spans two files."""
    ranges = [f.group_range for f in files if f.rows]
    if any(r is None for r in ranges):
        return False
    try:
        ordered = sorted(ranges)  # type: ignore[type-var]
    except TypeError:
        return False
    return all(a[1] < b[0] for a, b in zip(ordered, ordered[1:], strict=False))


@dataclass(frozen=True)
class BadFile:
    """An input file that cannot be scored, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class JobPlan:
    """What a run will do, established without scoring anything."""

    files: tuple[InputFile, ...]
    info: ModelInfo
    skipped: tuple[BadFile, ...] = ()
    rerank_within_files: bool = False  # rank inside each file as it is written, no shuffle
    mine_within_files: bool = False  # mine each file's queries as it is written, no shuffle
    evaluate_shuffled: bool = False  # measure each query in a writer, after a shuffle by query
    evaluate_within_files: bool = False  # measure each file's queries in its writer
    inspect_seconds: float = 0.0  # listing and footers
    pending: tuple[tuple[str, int], ...] = ()  # (path, bytes) of files whose footers are unread
    reference: tuple[tuple[str, Any], ...] = ()  # carried column -> type, from the footers read
    sampled_bytes: int = 0  # bytes of the files in ``files``
    others: tuple[tuple[str, ModelInfo], ...] = ()  # models: those after the first (``info``)

    def model_infos(self, cfg: JobConfig) -> dict[str, ModelInfo]:
        """Each model's info by short name (a lone model's under "")."""
        names = [name for name, _ in cfg.model_views()]
        return {names[0]: self.info, **dict(self.others)}

    @property
    def rows_estimate(self) -> int:
        """Rows of every input file: exact when no footer is pending, else extrapolated from
        the files read by their bytes."""
        if not self.pending:
            return self.rows
        per_byte = self.rows / max(self.sampled_bytes, 1)
        return self.rows + round(per_byte * sum(size for _, size in self.pending))

    @property
    def rows(self) -> int:
        """Rows in all input files that will be read."""
        return sum(f.rows for f in self.files)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


TAIL = 64 * 1024  # bytes read from the end of each file: the footer, for all but huge schemas


def _parse_footer(tail: bytes, size: int) -> pq.FileMetaData | int:
    """The footer in a file's last bytes, or the number of bytes needed when it is longer."""
    if size < 12 or tail[-4:] != b"PAR1":
        raise pa.ArrowInvalid(f"not a Parquet file ({size} bytes, no PAR1 footer magic)")
    length = int.from_bytes(tail[-8:-4], "little")
    if length + 8 > size - 4:
        raise pa.ArrowInvalid(f"footer of {length} bytes in a file of {size}")
    if length + 8 > len(tail):
        return length + 8
    return pq.read_metadata(pa.BufferReader(tail[-(length + 8) :]))


def read_footers(loc: Location, sizes: dict[str, int]) -> dict[str, Any]:
    """Every file's Parquet footer (FileMetaData), or the error reading it.

    On an object store this is one ranged GET per file (the last 64 KiB, sizes from the
    listing), all issued at once through s3fs's asynchronous client (many in flight, no
    thread per file); a footer longer than that costs one more. Local files are read as usual.
    """
    paths = sorted(sizes)
    if isinstance(loc.fs, LocalFileSystem):
        out: dict[str, Any] = {}
        for path in paths:
            try:
                out[path] = pq.read_metadata(path)
            except (pa.ArrowInvalid, OSError) as err:
                out[path] = err
        return out
    out = {}
    for path in paths:
        if sizes[path] < 12:  # no room for a footer: no request needed to say so
            out[path] = pa.ArrowInvalid(f"not a Parquet file ({sizes[path]} bytes)")
    todo = {p: TAIL for p in paths if p not in out}
    while todo:
        names = sorted(todo)
        starts = [max(0, sizes[p] - todo[p]) for p in names]
        tails = loc.fs.cat_ranges(names, starts, [sizes[p] for p in names], on_error="return")
        todo = {}
        for path, tail in zip(names, tails, strict=True):
            if isinstance(tail, Exception):
                error = tail
                if not isinstance(tail, OSError):
                    error = OSError(str(tail))
                    error.__cause__ = tail  # what the store said stays behind it
                out[path] = error
                continue
            try:
                found = _parse_footer(tail, sizes[path])
            except (pa.ArrowInvalid, OSError) as err:
                out[path] = err
                continue
            if isinstance(found, int):
                todo[path] = found
            else:
                out[path] = found
    return out


def _key_naming(cfg: JobConfig, column: str) -> str:
    """The config key that names an input column."""
    keys = {cfg.input.text_a: "input.text_a", cfg.input.text_b: "input.text_b"}
    if cfg.task == "rerank":
        keys.setdefault(cfg.rerank.group_by, "rerank.group_by")
    if cfg.task == "evaluate":
        keys.setdefault(cfg.evaluate.gold, "evaluate.gold")
        if cfg.evaluate.kind == "rerank":
            keys.setdefault(cfg.evaluate.group_by, "evaluate.group_by")
    if cfg.task == "mine":
        for key in ("group_by", "positive", "retriever_score"):
            if getattr(cfg.mine, key):
                keys.setdefault(getattr(cfg.mine, key), f"mine.{key}")
    return keys.get(column, "input.keep")


def _gold_fits(kind: str, t: pa.DataType) -> bool:
    """Whether an evaluate.kind's gold labels can have type ``t``: grades (integer, bool, or
    whole floats), numbers for similarity, names or indices (or 0/1) for classify."""
    number = pa.types.is_integer(t) or pa.types.is_floating(t)
    if kind == "similarity":
        return number
    return number or pa.types.is_boolean(t) or (kind == "classify" and _is_text(t))


def schema_problem(
    schema: pa.Schema, cfg: JobConfig, reference: dict[str, Any] | None = None
) -> str | None:
    """Why a file with this schema cannot be scored (a needed column missing, a text column
    not a string, a carried column of another type than ``reference``), or None."""
    for col in cfg.needed_columns():
        if col not in schema.names:
            return (
                f"column {col!r} not found ({_key_naming(cfg, col)}; columns: "
                f"{', '.join(schema.names)})"
            )
    for col in (cfg.input.text_a, cfg.input.text_b):
        if not _is_text(schema.field(col).type):
            return (
                f"text column {col!r} has type {schema.field(col).type}, not string "
                f"({_key_naming(cfg, col)})"
            )
    gold = cfg.evaluate.gold
    if cfg.task == "evaluate" and not _gold_fits(cfg.evaluate.kind, schema.field(gold).type):
        return (
            f"gold column {gold!r} has type {schema.field(gold).type}, which evaluate.kind "
            f"{cfg.evaluate.kind} cannot read as gold labels (evaluate.gold)"
        )
    if cfg.task == "mine":
        problem = _mine_columns_problem(schema, cfg)
        if problem:
            return problem
    for col, kind in (reference or {}).items():
        if schema.field(col).type != kind:
            return f"column {col!r} has type {schema.field(col).type}, other files {kind}"
    return None


def _mine_columns_problem(schema: pa.Schema, cfg: JobConfig) -> str | None:
    """Why task mine cannot read this schema's positive flags or retriever scores, or None."""
    flag = schema.field(cfg.mine.positive).type
    if not (pa.types.is_boolean(flag) or pa.types.is_integer(flag)):
        return (
            f"column {cfg.mine.positive!r} has type {flag}: mine.positive needs bool or integer "
            "grades (mine.relevant_from)"
        )
    if cfg.mine.retriever_score:
        kind = schema.field(cfg.mine.retriever_score).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            name = cfg.mine.retriever_score
            return f"column {name!r} has type {kind}: mine.retriever_score needs numbers"
    return None


def _inspect_file(
    loc: Location, path: str, cfg: JobConfig, footer: Any
) -> tuple[InputFile, pa.Schema]:
    """Row count and schema from the footer; raises InputError naming the file."""
    where = f"{loc.uri.split('://')[0]}://{path}" if "://" in loc.uri else path
    if isinstance(footer, Exception):
        raise InputError(f"{where}: not a readable Parquet file ({footer})") from None
    meta = footer
    schema = meta.schema.to_arrow_schema()
    problem = schema_problem(schema, cfg)
    if problem:
        raise InputError(f"{where}: {problem}")
    groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    column = cfg.group_column()
    span = group_range(meta, column) if column is not None else None
    return InputFile(path, meta.num_rows, groups, span), schema


def check_footers(
    loc: Location, cfg: JobConfig, sizes: dict[str, int], reference: dict[str, Any]
) -> tuple[list[InputFile], list[BadFile]]:
    """Read and check the footers of the given files; ``reference`` (carried column -> type)
    is filled from the first good file and holds the others to it."""
    footers = read_footers(loc, sizes)
    good: list[InputFile] = []
    bad: list[BadFile] = []
    for path in sorted(sizes):
        if isinstance(footers[path], Exception):  # the store's fault, not the file's
            raise_storage(footers[path], "input", cfg.input.path, cfg.input.storage)
        try:
            info, schema = _inspect_file(loc, path, cfg, footers[path])
        except InputError as err:
            bad.append(BadFile(path=path, reason=str(err)))
            continue
        mismatch = None
        for col in cfg.carried_columns():
            kind = schema.field(col).type
            if reference.setdefault(col, kind) != kind:
                mismatch = f"column {col!r} has type {kind}, other files {reference[col]}"
                break
        if mismatch:
            bad.append(BadFile(path=info.path, reason=f"{info.path}: {mismatch}"))
        else:
            good.append(info)
    return good, bad


def _refuse_bad(cfg: JobConfig, bad: list[BadFile]) -> None:
    if bad and cfg.input.on_bad_file == "fail":
        more = f" (and {len(bad) - 1} more bad file(s))" if len(bad) > 1 else ""
        raise InputError(bad[0].reason + more + "; set input.on_bad_file=skip to skip them")


def inspect_input(
    cfg: JobConfig, sample: int | None = None
) -> tuple[tuple[InputFile, ...], tuple[BadFile, ...]]:
    """List the input files and check every footer (or, with ``sample``, an even sample of at
    most that many): readable, needed columns present, texts are strings, carried columns of
    one type across files. See :func:`inspect_start` for the files left out.

    With ``input.on_bad_file: fail`` the first bad file raises InputError; with ``skip`` the
    bad files come back with their reasons.
    """
    good, bad, _, _, _ = inspect_start(cfg, sample)
    return good, bad


def list_input(cfg: JobConfig) -> tuple[Location, dict[str, int]]:
    """input.path resolved, and its Parquet files (path -> bytes); raises InputError for a path
    without any, StorageError (naming input.path) for a store that cannot be reached or read."""
    with storage_errors("input", cfg.input.path, cfg.input.storage):
        loc = resolve(cfg.input.path, cfg.input.storage)
        try:
            sizes = list_parquet_files(loc)
        except FileNotFoundError as err:
            check_bucket(loc, "input", cfg.input.storage)  # a missing bucket reads as no path
            raise InputError(str(err)) from None
        except PermissionError:  # a HEAD's 403 tells no more: a listing's error says why
            check_bucket(loc, "input", cfg.input.storage)
            raise
    if not sizes:
        raise InputError(f"no Parquet files under {cfg.input.path}")
    return loc, sizes


def inspect_start(
    cfg: JobConfig, sample: int | None = None
) -> tuple[tuple[InputFile, ...], tuple[BadFile, ...], dict[str, int], dict[str, Any], int]:
    """:func:`inspect_input`, plus the (path -> bytes) of the files whose footers were left
    for later, the carried columns' types the others must have, and the bytes of the files
    checked."""
    loc, sizes = list_input(cfg)
    pending: dict[str, int] = {}
    if sample is not None and len(sizes) > sample:
        paths = sorted(sizes)
        chosen = {paths[round(i * (len(paths) - 1) / max(sample - 1, 1))] for i in range(sample)}
        pending = {p: n for p, n in sizes.items() if p not in chosen}
        sizes = {p: sizes[p] for p in chosen}
    reference: dict[str, Any] = {}
    good, bad = check_footers(loc, cfg, sizes, reference)
    _refuse_bad(cfg, bad)
    if not good:
        raise InputError(f"no readable Parquet file under {cfg.input.path}")
    return tuple(good), tuple(bad), pending, reference, sum(sizes.values())


def finish_inspection(cfg: JobConfig, plan: JobPlan) -> JobPlan:
    """The plan with every pending footer read and checked (what a run does in the background
    while it scores); raises InputError for a bad file under ``input.on_bad_file: fail``."""
    if not plan.pending:
        return plan
    loc = resolve(cfg.input.path, cfg.input.storage)
    reference = dict(plan.reference)
    good, bad = check_footers(loc, cfg, dict(plan.pending), reference)
    _refuse_bad(cfg, bad)
    files = tuple(sorted((*plan.files, *good), key=lambda f: f.path))
    skipped = tuple(sorted((*plan.skipped, *bad), key=lambda b: b.path))
    return replace(plan, files=files, skipped=skipped, pending=())


def check_paths(cfg: JobConfig) -> None:
    """Refuse an output path equal to or inside the input path, and reserved column names."""
    src = resolve(cfg.input.path, cfg.input.storage)
    dst = resolve(cfg.output.path, cfg.output.storage)
    same_store = type(src.fs) is type(dst.fs)
    src_path, dst_path = src.path.rstrip("/") + "/", dst.path.rstrip("/") + "/"
    if same_store and dst_path.startswith(src_path):
        raise ConfigError(
            f"output.path {cfg.output.path} is inside input.path {cfg.input.path}; "
            "the output would be read back as input"
        )
    reserved = [c for c in cfg.needed_columns() if c.startswith("_")]
    if reserved:
        raise ConfigError(f"column names starting with '_' are reserved for crossenc: {reserved}")


def check_output_writable(cfg: JobConfig) -> None:
    """Raise StorageError naming output.path (or output.report) when the output cannot be
    written there; creates nothing (see :func:`crossenc.storage.check_writable`)."""
    check_writable(resolve(cfg.output.path, cfg.output.storage), "output", cfg.output.storage)
    if cfg.output.report:  # written after the commit: found unwritable only then, otherwise
        head, slash, _ = cfg.output.report.rpartition("/")
        folder = (head or "/") if slash else "."
        check_writable(resolve(folder, cfg.output.storage), "output.report", cfg.output.storage)


def plan_job(cfg: JobConfig) -> JobPlan:
    """Every check that can be made before scoring; raises ConfigError, InputError or
    StorageError (a store that cannot be reached or refuses, an output that cannot be
    written, a model without weights or tokenizer: all before Ray starts)."""
    started = time.monotonic()
    check_paths(cfg)
    check_output_writable(cfg)
    hint = model_storage_hint(cfg)
    if hint:
        log.warning("%s", hint)
    try:
        info = describe_model(cfg.model, cfg.runtime.cache_dir)
    except StorageError as err:
        if hint and err.key == "model":
            raise StorageError(f"{err.message}; {hint}", err.key) from err
        raise
    failpoint("plan.after_model")
    check_task(cfg, info)
    others = tuple((name, describe_view(view)) for name, view in cfg.model_views()[1:])
    # A rerank (and an evaluation of rankings) reads every footer first: the in-file rank
    # needs each file's row count.
    sample = None if cfg.group_column() is not None else cfg.input.inspect_files
    files, skipped, pending, reference, sampled = inspect_start(cfg, sample)
    within = cfg.task == "rerank" and grouped_within_files(cfg, files, cfg.rerank.within_files)
    measured = evaluate_where(cfg, files, reference) if cfg.task == "evaluate" else "driver"
    mined = cfg.task == "mine" and grouped_within_files(cfg, files, cfg.mine.within_files)
    seconds = time.monotonic() - started
    sizes = list(pending.items())
    if pending:
        log.info(
            "inspect: %d of %d input files checked before the start (input.inspect_files); "
            "the rest are checked while the run scores",
            len(files) + len(skipped),
            len(files) + len(skipped) + len(pending),
        )
    return JobPlan(
        files,
        info,
        skipped,
        rerank_within_files=within,
        mine_within_files=mined,
        evaluate_within_files=measured == "files",
        evaluate_shuffled=measured == "shuffle",
        inspect_seconds=seconds,
        pending=tuple(sorted(sizes)),
        reference=tuple(reference.items()),
        sampled_bytes=sampled,
        others=others,
    )


def evaluate_where(
    cfg: JobConfig, files: tuple[InputFile, ...], reference: dict[str, Any]
) -> Literal["files", "shuffle", "driver"]:
    """Where a ranking's queries are measured: in the writers, each file's as it is written
    ("files": evaluate.within_files, or None and the footers show that no query spans two
    files), or each query's once a shuffle by query has brought its rows to one writer
    ("shuffle": queries may span files; not with output.mode resume); both need integer or
    bool grades, which need no check of each value. Else ("driver", and for classify and
    similarity, or evaluate.within_files false) the driver reads the written rows back."""
    ev = cfg.evaluate
    if ev.kind != "rerank" or ev.within_files is False:
        return "driver"
    gold = reference.get(ev.gold)
    whole = gold is not None and (pa.types.is_integer(gold) or pa.types.is_boolean(gold))
    if ev.within_files:
        if not whole:
            raise ConfigError(
                f"evaluate.within_files true needs integer or bool grades in {ev.gold!r} (the "
                f"footers say {gold}): set it false to have the driver check each grade"
            )
        return "files"
    if whole and groups_within_files(files):
        log.info(
            "evaluate: no query spans two input files (footer statistics of %r): each file's "
            "queries are measured as it is written",
            ev.group_by,
        )
        return "files"
    if whole and cfg.output.mode != "resume":
        log.info(
            "evaluate: queries may span input files (footer statistics of %r): each query is "
            "measured in a writer after a shuffle by query (set evaluate.within_files=true if "
            "every query sits in one file)",
            ev.group_by,
        )
        return "shuffle"
    log.info(
        "evaluate: the grades are not integers, or a resume (which a shuffle cannot do): the "
        "written rows are read back and measured in the driver"
    )
    return "driver"


GROUPS = {  # a task's group, groups, what it does with them, and why they need each other
    "rerank": ("group", "groups", "ranking", "ranks then span the whole dataset"),
    "mine": ("query", "queries", "mining", "a query's negatives are chosen among all its rows"),
}


def grouped_within_files(cfg: JobConfig, files: tuple[InputFile, ...], within: bool | None) -> bool:
    """Whether a rerank's groups (task mine: its queries) each sit in one input file, so the
    writers handle each file's as it is written, with no shuffle: ``within`` (rerank.within_files,
    mine.within_files), or where None the footers' min/max of the group column (files whose
    ranges do not overlap). A shuffle cannot resume: refused with output.mode resume."""
    task = cfg.task
    group, groups, doing, why = GROUPS[task]
    if within is None:
        within = groups_within_files(files)
        if within:
            log.info(
                "%s: no %s spans two input files (footer statistics of %r): %s inside each "
                "file, no shuffle",
                task,
                group,
                cfg.group_column(),
                doing,
            )
        else:
            log.info(
                "%s: %s may span input files: %s after a shuffle of the whole input (memory "
                "grows with it; set %s.within_files=true if every %s sits in one file)",
                task,
                groups,
                doing,
                task,
                group,
            )
    if cfg.output.mode == "resume" and not within:
        raise ConfigError(
            f"output.mode resume is not available for a {task} whose {groups} span input files "
            f"({why}): run again with output.mode=overwrite, or set {task}.within_files=true if "
            f"every {group} sits in one file"
        )
    return within


def describe_view(view: JobConfig) -> ModelInfo:
    """One more model of ``models``: described and checked against the task as the first is."""
    info = describe_model(view.model, view.runtime.cache_dir)
    check_task(view, info)
    return info
