"""What a failure means to the user: one exit code and one message naming what to change.

Everything the ``crossenc`` command can fail with goes through :func:`explain`, which walks the
exception's chain (``__cause__``, ``__context__`` and the ``cause`` a Ray task error carries
over from its worker) and picks the first thing it recognises:

* :class:`~crossenc.config.ConfigError` (2), :class:`~crossenc.inputs.plan.InputError` (3),
  :class:`~crossenc.output.commit.ConcurrentRunError` (7): already worded for the user;
* a store or disk problem (8): an endpoint that cannot be reached, credentials refused, a
  bucket that does not exist, permission denied, a read-only or full disk. Raised where the
  config key is known, it is a :class:`StorageError` naming that key and the path; found bare
  (s3fs's PermissionError over botocore's ClientError, an OSError with ENOSPC), it is worded
  here, attributed to ``input``/``output``/``model`` by the endpoint or path it names;
* a failure inside the scoring pipeline (a Ray task or actor error), or rows that do not add
  up: the run failed (4), nothing committed;
* anything else is a bug (9): the full traceback is written to a file, and the message says so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from crossenc.config import JobConfig, StorageConfig

EXIT_OK = 0
EXIT_CONFIG = 2  # bad config, or output.compare_to holds no committed run
EXIT_INPUT = 3  # bad input: missing file or column, wrong type (nothing was scored)
EXIT_FAILED = 4  # the run failed while scoring; nothing was committed
# The run committed, but input.on_bad_file=skip left files out, or more rows than
# output.max_dead_letter_fraction went to the dead letters.
EXIT_PARTIAL = 5
EXIT_DRIFT = 6  # the run committed, but moved past output.drift's thresholds (on_drift: fail)
EXIT_CONCURRENT = 7  # another run committed to the same output first; this one committed nothing
# A store or disk failed or refused: endpoint unreachable, credentials refused, bucket missing,
# permission denied, read-only or full disk, the Hugging Face Hub out of reach.
EXIT_STORAGE = 8
EXIT_BUG = 9  # an unexpected error, a bug: the full traceback is written to a file
# crossenc doctor: the environment would stop a run (a dependency missing, outside crossenc's
# range or known bad; a cluster that cannot be reached, or whose Ray or Python differs)
EXIT_ENVIRONMENT = 10

PATH_KEYS = {"input": "input.path", "output": "output.path", "model": "model.name"}


class InputError(ValueError):
    """The input data cannot be scored as configured (missing file, column or type)."""


class ConcurrentRunError(RuntimeError):
    """Another run committed to the same output while this one ran: nothing was committed."""


class InvariantError(RuntimeError):
    """Rows read differ from rows written + dead-lettered + dropped: nothing is committed."""


class StorageError(Exception):
    """A store or disk problem, worded with the config key to change and the path."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message, key)  # both in args: it pickles across Ray as it is
        self.message, self.key = message, key

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Problem:
    """What went wrong with a store or disk, recognised from an exception."""

    kind: str  # unreachable, credentials, denied, no_bucket, disk_full, read_only, ...
    detail: str  # the underlying error, one line
    filename: str | None = None  # the local file, where the error names one
    url: str | None = None  # the endpoint URL, where the error names one
    bucket: str | None = None


# Problems of a local disk (the others are an object store's or the Hub's).
LOCAL_KINDS = frozenset({"disk_full", "file_too_large", "read_only", "permission", "not_a_dir"})


def chain(err: BaseException | None, context: bool = True) -> list[BaseException]:
    """An exception and those behind it: Ray's ``cause`` (a worker's error), ``__cause__``,
    and (with ``context``, unless suppressed by ``from None``) ``__context__``."""
    out: list[BaseException] = []
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        behind = [getattr(e, "cause", None), e.__cause__]
        if context and not e.__suppress_context__:
            behind.append(e.__context__)
        todo += [c for c in behind if isinstance(c, BaseException)]
    return out


def _is_ray_wrapper(e: BaseException) -> bool:
    """A Ray error: a task's error carries its worker's exceptions as traceback text only
    (Ray Data wraps a stage's error, and the chain behind it does not survive pickling)."""
    return type(e).__module__.startswith("ray.") or "RayTaskError" in type(e).__name__


@dataclass(frozen=True)
class Remote:
    """An exception raised in a Ray worker, as the traceback text of the Ray error names it:
    innermost first."""

    type: str  # e.g. crossenc.errors.StorageError, OSError, botocore.exceptions.ClientError
    message: str


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RECORD = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)): (.*)$")


def remote_errors(err: BaseException) -> list[Remote]:
    """The worker exceptions every Ray error in err's chain names (none for other errors)."""
    out: list[Remote] = []
    for e in chain(err):
        if not _is_ray_wrapper(e):
            continue
        for line in _ANSI.sub("", str(e)).splitlines():
            m = _RECORD.match(line)
            if m and not m[1].startswith("ray.") and Remote(m[1], m[2]) not in out:
                out.append(Remote(m[1], m[2]))
    return out


def _key_of(message: str) -> str:
    """The config section a worded storage message starts with."""
    for key, path_key in PATH_KEYS.items():
        if message.startswith(path_key + " "):
            return key
    return ""


def find(err: BaseException, kind: type[BaseException] | tuple[type, ...]) -> Any:
    """The first exception of ``kind`` in err's chain, or None; one raised in a Ray worker
    is rebuilt from its message (crossenc's own error types only)."""
    for e in chain(err):
        if isinstance(e, kind) and not _is_ray_wrapper(e):
            return e
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for remote in remote_errors(err):
        for k in kinds:
            if not k.__module__.startswith("crossenc"):
                continue
            if remote.type == f"{k.__module__}.{k.__name__}":
                if k is StorageError:
                    return StorageError(remote.message, _key_of(remote.message))
                return k(remote.message)
    return None


def one_line(e: BaseException) -> str:
    """``Type: message``, first line only (a Ray error's message holds a whole traceback)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
    "RequestTimeTooSkewed",
}
_DENIED_CODES = {"AccessDenied", "403", "AllAccessDisabled", "AccountProblem", "InvalidSecurity"}
_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionRefusedError"}
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError"}
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_UNREACHABLE_ERRNOS = {
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
}
_CLIENT_ERROR = re.compile(r"An error occurred \(([\w.-]+)\) when calling the (\w+) operation")


def _code_problem(
    code: str, operation: str, detail: str, bucket: str | None = None
) -> Problem | None:
    """An S3 error code (ClientError), in words."""
    if code in _CREDENTIAL_CODES:
        return Problem("credentials", detail)
    if code in _DENIED_CODES:
        return Problem("denied", detail)
    if code == "NoSuchBucket" or (code == "404" and operation == "HeadBucket"):
        return Problem("no_bucket", detail, bucket=bucket)
    return None


def _errno_problem(code: int, detail: str, filename: str | None = None) -> Problem | None:
    """A local disk's (or socket's) errno, in words."""
    if code in _DISK_FULL:
        kind = "file_too_large" if code == errno.EFBIG else "disk_full"
        return Problem(kind, detail, filename=filename)
    if code == errno.EROFS:
        return Problem("read_only", detail, filename=filename)
    if code in (errno.EACCES, errno.EPERM):
        return Problem("permission", detail, filename=filename)
    if code == errno.ENOTDIR:
        return Problem("not_a_dir", detail, filename=filename)
    if code in _UNREACHABLE_ERRNOS:
        return Problem("unreachable", detail)
    return None


def _botocore_problem(e: BaseException) -> Problem | None:
    try:
        import botocore.exceptions as bx
    except ImportError:  # pragma: no cover - s3fs depends on botocore
        return None
    if isinstance(e, bx.ConnectionError):  # EndpointConnectionError, ConnectTimeoutError, ...
        return Problem("unreachable", one_line(e))
    if isinstance(e, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return Problem("no_credentials", one_line(e))
    if isinstance(e, bx.CredentialRetrievalError):
        return Problem("credentials", one_line(e))
    if isinstance(e, bx.ClientError):
        error = (getattr(e, "response", None) or {}).get("Error", {})
        return _code_problem(
            str(error.get("Code", "")), e.operation_name, one_line(e), error.get("BucketName")
        )
    return None


def _hub_problem(e: BaseException) -> Problem | None:
    try:
        import huggingface_hub.errors as hx
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    if isinstance(e, hx.GatedRepoError):
        return Problem("hub_gated", one_line(e))
    if isinstance(e, (hx.OfflineModeIsEnabled, hx.LocalEntryNotFoundError)):
        return Problem("hub_unreachable", one_line(e))
    return None


def _remote_problem(remote: Remote) -> Problem | None:
    """A store or disk problem named in a worker's traceback text."""
    name = remote.type.rsplit(".", 1)[-1]
    detail = f"{name}: {remote.message}"
    if remote.type == f"{__name__}.StorageError":
        return Problem("worded", remote.message)
    m = _CLIENT_ERROR.search(remote.message)
    if m:
        return _code_problem(m[1], m[2], detail)
    if name in _UNREACHABLE:
        return Problem("unreachable", detail)
    if name in _NO_CREDENTIALS:
        return Problem("no_credentials", detail)
    m = re.match(r"\[Errno (\d+)\]", remote.message)
    return _errno_problem(int(m[1]), detail) if m else None


def storage_problem(err: BaseException) -> Problem | None:
    """The store or disk problem behind an exception, or None when it is not one."""
    links = [e for e in chain(err) if not _is_ray_wrapper(e)]
    for e in links:  # what the store said is the most precise
        found = _botocore_problem(e) or _hub_problem(e)
        if found is not None:
            return found
    for e in links:
        if isinstance(e, StorageError):
            return Problem("worded", e.message)
        code = getattr(e, "errno", None) if isinstance(e, OSError) else None
        if code is not None:
            name = getattr(e, "filename", None)
            found = _errno_problem(code, one_line(e), str(name) if name is not None else None)
            if found is not None:
                return found
    remotes = remote_errors(err)
    for remote in remotes:
        found = _remote_problem(remote)
        if found is not None:
            return found
    for e in links:  # s3fs turns a 403 into a PermissionError without an errno
        if isinstance(e, PermissionError):
            return Problem("denied", one_line(e))
    for remote in remotes:
        if remote.type == "PermissionError":
            return Problem("denied", f"PermissionError: {remote.message}")
    return None


def _bucket(uri: str) -> str:
    return uri.split("://", 1)[-1].split("/", 1)[0]


def _store(storage: StorageConfig | None) -> str:
    """The object store, as the config names it (its options unknown: just the words)."""
    if storage is None:
        return "the object store"
    return f"the object store at {storage.endpoint_url or 'AWS S3 (no endpoint_url)'}"


def storage_message(
    problem: Problem, key: str, uri: str, storage: StorageConfig | None = None
) -> str:
    """The message for a store or disk problem at ``uri``, the path of config section ``key``
    (``input``, ``output``, ``model``; another dotted key is named as it is)."""
    if problem.kind == "worded":
        return problem.detail
    path_key = PATH_KEYS.get(key, key)
    at = f"{path_key} {uri}: " if uri else ""
    store = _store(storage)
    bucket = problem.bucket or (_bucket(uri) if "://" in uri else None)
    section = key if key in PATH_KEYS else None
    creds = (
        f"{section}.storage.key / secret / token (unset: the AWS environment, profile or role)"
        if section
        else "the store's credentials"
    )
    endpoint = f"{section}.storage.endpoint_url" if section else "the endpoint"
    detail = f"({problem.detail})"
    file = f" writing {problem.filename}" if problem.filename else ""
    on = f" on {problem.filename}" if problem.filename else ""
    hub_way = (
        "use a local folder or an s3:// folder as model.name, or download the model "
        f"beforehand where the Hub is reachable (huggingface-cli download {uri})"
    )
    text = {
        "unreachable": f"cannot reach {store} {detail}; check {endpoint} and the network",
        "no_credentials": f"no credentials for {store} {detail}; set {creds}",
        "credentials": f"{store} refused the credentials {detail}; check {creds}",
        "denied": f"access denied by {store} {detail}: wrong credentials ({creds}) or no "
        "permission on the bucket",
        "no_bucket": f"{f'bucket {bucket!r}' if bucket else 'the bucket'} does not exist in "
        f"{store} {detail}; create it, or fix {path_key}",
        "disk_full": f"disk full{file} {detail}; free space there or set {path_key} elsewhere",
        "file_too_large": f"file too large{file} (a file size limit, or a full disk) {detail}; "
        f"free space there or set {path_key} elsewhere",
        "read_only": f"read-only file system{on} {detail}; set {path_key} elsewhere",
        "permission": f"permission denied{on} {detail}; set {path_key} to a place this user "
        "can read and write",
        "not_a_dir": f"not a folder{on} {detail}: a file stands where a folder is needed; "
        f"set {path_key} elsewhere",
        "hub_unreachable": f"the Hugging Face Hub cannot be reached and the model is not in "
        f"the local Hub cache {detail}; {hub_way}",
        "hub_offline": "the Hugging Face Hub is switched off (HF_HUB_OFFLINE is set) and the "
        f"model is not in the local Hub cache {detail}; {hub_way}",
        "hub_gated": f"the Hugging Face Hub refused access to a gated model {detail}; set "
        "HF_TOKEN, or use a local or s3:// copy of the model",
    }.get(problem.kind, detail)
    return at + text


def raise_storage(
    err: BaseException, key: str, uri: str, storage: StorageConfig | None = None
) -> None:
    """Raise a StorageError naming ``key`` and ``uri`` when err is a store or disk problem
    (and not already worded); otherwise return, so that the caller re-raises err."""
    if _worded(err) or find(err, StorageError) is not None:
        return
    problem = storage_problem(err)
    if problem is not None:
        raise StorageError(storage_message(problem, key, uri, storage), key) from err


@contextlib.contextmanager
def storage_errors(key: str, uri: str, storage: StorageConfig | None = None) -> Iterator[None]:
    """Store and disk problems raised inside become StorageErrors naming ``key`` and ``uri``."""
    try:
        yield
    except Exception as err:
        raise_storage(err, key, uri, storage)
        raise


def _worded(err: BaseException) -> bool:
    """An error already worded for the user (config, input, concurrent run)."""
    from crossenc.config import ConfigError

    return isinstance(err, (ConfigError, InputError, ConcurrentRunError))


F = TypeVar("F", bound=Callable[..., Any])


def output_errors(fn: F) -> F:
    """Decorate a function whose first argument is an OutputConfig, or a method of an object
    holding one as ``out`` (an output committer): store and disk problems become StorageErrors
    naming output.path."""

    @wraps(fn)
    def wrapper(first: Any, *args: Any, **kwargs: Any) -> Any:
        out = getattr(first, "out", first)
        with storage_errors("output", out.path, out.storage):
            return fn(first, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def model_storage_hint(cfg: JobConfig) -> str | None:
    """When the model is on s3:// with no model.storage endpoint while the input or output
    store has one: the likely mistake, in words."""
    if not cfg.model.name.startswith(("s3://", "s3a://")) or cfg.model.storage.endpoint_url:
        return None
    others = [
        f"{name}.storage points at {section.storage.endpoint_url}"
        for name, section in (("input", cfg.input), ("output", cfg.output))
        if section.storage.endpoint_url
    ]
    if not others:
        return None
    return (
        f"model.storage is unset: the model is read from AWS S3, while {' and '.join(others)}; "
        "set model.storage.endpoint_url (and model.storage.key / secret) if the model is on "
        "that store"
    )


def _sections(cfg: JobConfig) -> dict[str, tuple[str, StorageConfig]]:
    """input / output / model -> (path, storage options)."""
    return {
        "input": (cfg.input.path, cfg.input.storage),
        "output": (cfg.output.path, cfg.output.storage),
        "model": (cfg.model.name, cfg.model.storage),
    }


def _attribute(problem: Problem, cfg: JobConfig) -> str | None:
    """Which of input / output / model a bare store or disk problem concerns: the one whose
    local folder holds the file it names, or whose endpoint it names, or the only one on an
    object store; None when that cannot be told."""
    sections = _sections(cfg)
    remote = [key for key, (path, _) in sections.items() if "://" in path]
    if problem.kind in LOCAL_KINDS:
        local = [key for key in sections if key not in remote]
        if problem.filename:
            name = os.path.abspath(problem.filename)
            for key in local:
                root = os.path.abspath(os.path.expanduser(sections[key][0]))
                if name == root or name.startswith(root.rstrip("/") + "/"):
                    return key
        writes = problem.kind in ("disk_full", "file_too_large", "read_only")
        return "output" if writes and "output" in local else None  # what a run writes most
    for key in remote:
        url = sections[key][1].endpoint_url
        if url and url.rstrip("/") in problem.detail:
            return key
    return remote[0] if len(remote) == 1 else None


def crash_dir_candidates() -> list[Path]:
    """Where tracebacks go: $CROSSENC_CRASH_DIR, ~/.cache/crossenc/crashes, the temp folder."""
    out = []
    if os.environ.get("CROSSENC_CRASH_DIR"):
        out.append(Path(os.environ["CROSSENC_CRASH_DIR"]))
    out += [Path.home() / ".cache" / "crossenc" / "crashes", Path(tempfile.gettempdir())]
    return out


_SECRET_SET = re.compile(r"^([\w.]*(?:secret|token|key)[\w.]*=).+", re.IGNORECASE)


def _masked(arg: str) -> str:
    """A command-line argument with a secret's value (``--set input.storage.secret=...``)
    masked, as every printed config is."""
    return _SECRET_SET.sub(r"\1**********", arg)


def write_traceback(err: BaseException, argv: list[str] | None = None) -> str:
    """Write err's full traceback (and a Ray worker's, which its message holds) to a file,
    after the command's arguments (secrets masked); returns its path, or why it could not be
    written."""
    from crossenc import __version__

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    header = (
        f"crossenc {__version__}, Python {sys.version.split()[0]}, {stamp}Z\n"
        f"command: crossenc {' '.join(_masked(a) for a in (argv or sys.argv[1:]))}\n\n"
    )
    text = header + "".join(traceback.format_exception(type(err), err, err.__traceback__))
    problems = []
    for folder in crash_dir_candidates():
        path = folder / f"crossenc-crash-{stamp}-{os.getpid()}.txt"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return str(path)
        except OSError as e:  # a full or read-only disk: try the next place
            problems.append(f"{folder}: {e}")
    return "nowhere (" + "; ".join(problems) + ")"


def explain(
    err: BaseException, cfg: JobConfig | None = None, argv: list[str] | None = None
) -> tuple[int, str]:
    """The exit code and the one message (``crossenc: ...``) for an exception the command
    could not handle otherwise; ``argv``, the command's arguments, heads a written traceback."""
    from crossenc.config import ConfigError

    found = find(err, ConcurrentRunError)
    if found is not None:
        return EXIT_CONCURRENT, f"crossenc: concurrent run: {found}"
    found = find(err, StorageError)
    if found is not None:
        message = found.message
        hint = model_storage_hint(cfg) if cfg is not None and found.key == "model" else None
        if hint and hint not in message:
            message += f"; {hint}"
        return EXIT_STORAGE, f"crossenc: storage error: {message}"
    found = find(err, ConfigError)
    if found is not None:
        return EXIT_CONFIG, f"crossenc: config error: {found}"
    found = find(err, InputError)
    if found is not None:
        return EXIT_INPUT, f"crossenc: input error: {found}"
    problem = storage_problem(err)
    if problem is not None:
        key = _attribute(problem, cfg) if cfg is not None else None
        if key is not None and cfg is not None:
            path, storage = _sections(cfg)[key]
            message = storage_message(problem, key, path, storage)
            hint = model_storage_hint(cfg) if key == "model" else None
            message += f"; {hint}" if hint else ""
        else:
            message = storage_message(problem, "the path", "") + (
                " (input.storage, output.storage or model.storage)"
            )
        return EXIT_STORAGE, f"crossenc: storage error: {message}"
    where = write_traceback(err, argv)
    if _failed_while_scoring(err):
        remote = remote_errors(err)
        what = f"{remote[0].type.rsplit('.', 1)[-1]}: {remote[0].message}" if remote else None
        return EXIT_FAILED, (
            f"crossenc: run failed: {what or one_line(err)}; nothing committed "
            f"(output.mode=resume continues the run); full traceback in {where}"
        )
    return EXIT_BUG, (
        f"crossenc: internal error (a bug; please report it): {one_line(err)}; "
        f"full traceback in {where}"
    )


def _failed_while_scoring(err: BaseException) -> bool:
    """A failure of the scoring pipeline (a Ray task, actor or Ray Data error), or rows that
    do not add up after it: the run failed, nothing was committed."""
    for e in chain(err, context=False):
        names = {c.__name__ for c in type(e).__mro__}
        if _is_ray_wrapper(e) or InvariantError.__name__ in names:
            return True
    return False
