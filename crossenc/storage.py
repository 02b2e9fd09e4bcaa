"""Local and object-store paths: one place that turns a path plus options into a filesystem."""

from __future__ import annotations

import os
from dataclasses import dataclass

import fsspec
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

from crossenc.config import StorageConfig

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


def resolve(uri: str, storage: StorageConfig | None = None) -> Location:
    """Resolve a local path or s3:// URI to a filesystem and an fs-relative path."""
    if is_remote(uri):
        import s3fs

        kwargs = (storage or StorageConfig()).s3fs_kwargs()
        fs = s3fs.S3FileSystem(**kwargs)
        path = uri.split("://", 1)[1].rstrip("/")
        return Location(uri=uri, fs=fs, path=path)
    return Location(uri=uri, fs=LocalFileSystem(), path=os.path.abspath(os.path.expanduser(uri)))


def list_parquet_files(loc: Location) -> list[str]:
    """Every Parquet file under a location (a single file is returned as is), sorted."""
    if not loc.fs.exists(loc.path):
        raise FileNotFoundError(f"input path does not exist: {loc.uri}")
    if loc.fs.isfile(loc.path):
        return [loc.path]
    files = [
        p
        for p in loc.fs.find(loc.path)
        if p.endswith(".parquet") and not os.path.basename(p).startswith(("_", "."))
    ]
    return sorted(files)
