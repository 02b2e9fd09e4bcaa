"""Local and object-store paths: one place that turns a path plus options into a filesystem."""

from __future__ import annotations

import os
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from crossenc.config import StorageConfig
from crossenc.errors import Problem, StorageError, storage_errors, storage_message

REMOTE_SCHEMES = ("s3://", "s3a://")


def is_remote(path: str) -> bool:
    """True for object-store URIs (s3://...)."""
    return path.startswith(REMOTE_SCHEMES)


@dataclass(frozen=True)
class Location:
    """A path resolved to an fsspec filesystem and the path that filesystem understands."""

    uri: str
    fs: fsspec.AbstractFileSystem
    path: str

    @property
    def arrow_fs(self) -> pafs.FileSystem:
        """The same filesystem for pyarrow and Ray Data."""
        if isinstance(self.fs, LocalFileSystem):
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    def join(self, *parts: str) -> str:
        """A child path on the same filesystem."""
        return "/".join([self.path.rstrip("/"), *parts])

    def write_table(self, relative: str, table: pa.Table) -> str:
        """Write ``table`` as Parquet at ``relative`` under this location (its folders made);
        returns the file as a user names it: the URI (s3://...) on a store, else the path."""
        path = self.join(relative)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        pq.write_table(table, path, filesystem=self.arrow_fs)
        return f"{self.uri.rstrip('/')}/{relative}" if "://" in self.uri else path


RETRIED = [0]  # object-store requests this process retried (botocore's RetryAttempts)


def retried_requests() -> int:
    """Object-store requests this process has retried so far (throttling, 5xx, timeouts)."""
    return RETRIED[0]


def _count_retries(parsed: dict | None = None, **_: object) -> None:
    if parsed:
        RETRIED[0] += int(parsed.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)


def _watch_retries(fs: object) -> None:
    """Count the retries of every request of an s3fs filesystem (once per client)."""
    from fsspec.asyn import sync

    watched = getattr(fs, "_crossenc_watched", None)
    if watched is not None and watched is getattr(fs, "_s3", None):
        return  # this client is counted already: no hop to fsspec's loop
    client = sync(fs.loop, fs.set_session)  # type: ignore[attr-defined]
    if getattr(fs, "_crossenc_watched", None) is not client:
        client.meta.events.register("after-call.s3", _count_retries)
        fs._crossenc_watched = client  # type: ignore[attr-defined]


def resolve(uri: str, storage: StorageConfig | None = None) -> Location:
    """Resolve a local path or s3:// URI to a filesystem and an fs-relative path."""
    if is_remote(uri):
        import s3fs

        kwargs = (storage or StorageConfig()).s3fs_kwargs()
        fs = s3fs.S3FileSystem(**kwargs)
        _watch_retries(fs)
        path = uri.split("://", 1)[1].rstrip("/")
        return Location(uri=uri, fs=fs, path=path)
    return Location(uri=uri, fs=LocalFileSystem(), path=os.path.abspath(os.path.expanduser(uri)))


def list_parquet_files(loc: Location) -> dict[str, int]:
    """Every Parquet file under a location (a single file is returned as is) with its size in
    bytes, in path order: one listing request per 1,000 files on an object store."""
    if not loc.fs.exists(loc.path):
        raise FileNotFoundError(f"input path does not exist: {loc.uri}")
    if loc.fs.isfile(loc.path):
        return {loc.path: int(loc.fs.size(loc.path))}
    found = loc.fs.find(loc.path, detail=True)
    return {
        p: int(info.get("size") or 0)
        for p, info in sorted(found.items())
        if p.endswith(".parquet") and not os.path.basename(p).startswith(("_", "."))
    }


def check_bucket(loc: Location, key: str, storage: StorageConfig | None = None) -> None:
    """For an s3:// location: one listing request (at most one key) under its prefix, so that
    an unreachable endpoint, refused credentials or a missing bucket raise a StorageError
    naming ``key`` (input, output, model) before anything else is done."""
    if not is_remote(loc.uri):
        return
    bucket, _, prefix = loc.path.partition("/")
    with storage_errors(key, loc.uri, storage):
        loc.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)


def check_writable(loc: Location, key: str, storage: StorageConfig | None = None) -> None:
    """Raise a StorageError naming ``key`` when the location cannot be written: on an object
    store, see :func:`check_bucket`; on local disk, the path is a file, or the nearest folder
    that exists above it is a file, read-only or not writable by this user. Creates nothing."""
    if is_remote(loc.uri):
        check_bucket(loc, key, storage)
        return
    path = loc.path
    if os.path.exists(path) and not os.path.isdir(path):
        problem = Problem("not_a_dir", f"{path} is a file", filename=path)
        raise StorageError(storage_message(problem, key, loc.uri), key)
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        problem = Problem("not_a_dir", f"{probe} is a file, not a folder", filename=probe)
        raise StorageError(storage_message(problem, key, loc.uri), key)
    if not os.access(probe, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
        problem = Problem(
            "read_only" if read_only else "permission",
            f"{probe} is not writable" + (" (read-only file system)" if read_only else ""),
            filename=probe,
        )
        raise StorageError(storage_message(problem, key, loc.uri), key)
