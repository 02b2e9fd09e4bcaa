"""Which committer an output has: the Parquet folder's, or a Delta or Iceberg table's, for
output.path and for the earlier runs other settings name (output.compare_to, reuse_from)."""

from __future__ import annotations

from typing import Any

from crossenc.config import ConfigError, OutputConfig
from crossenc.output import commit as folder
from crossenc.output.delta import DeltaCommitter
from crossenc.output.iceberg import IcebergCommitter
from crossenc.output.tables import Committer, ParquetCommitter, TableCommitter
from crossenc.storage import resolve


def committer_for(out: OutputConfig) -> Committer:
    """The committer of output.format."""
    if out.format == "delta":
        return DeltaCommitter(out)
    if out.format == "iceberg":
        return IcebergCommitter(out)
    return ParquetCommitter(out)


def parse_table_ref(ref: str) -> tuple[str, int | None, dict[str, str] | None]:
    """``path[@version][#col=value,...]`` → (path, version, partition)."""
    partition: dict[str, str] | None = None
    if "#" in ref:
        ref, _, spec = ref.partition("#")
        partition = {}
        for item in spec.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ConfigError(
                    f"output.compare_to: partition {spec!r} is not col=value[,col=value]"
                )
            partition[key.strip()] = value.strip()
    version = None
    head, at, tail = ref.rpartition("@")
    if at and tail.isdigit():
        ref, version = head, int(tail)
    return ref, version, partition


ICEBERG_REF = "iceberg:"


def committer_at(
    out: OutputConfig, ref: str
) -> tuple[Committer, int | None, dict[str, str] | None]:
    """The committer of an output another setting names (output.compare_to, reuse_from): a
    Parquet folder, a Delta table path, or ``iceberg:<namespace.name>`` in output.catalog,
    each optionally ``@version`` and ``#col=value``; with that version and partition."""
    path, version, partition = parse_table_ref(ref)
    if path.startswith(ICEBERG_REF):
        table = out.model_copy(
            update={"format": "iceberg", "table": path[len(ICEBERG_REF) :], "compare_to": ref}
        )
        return committer_for(table), version, partition
    target = OutputConfig(path=path, storage=out.storage, compare_to=ref)
    loc = resolve(path, out.storage)
    if version is not None or partition is not None or loc.fs.exists(loc.join("_delta_log")):
        return committer_for(target.model_copy(update={"format": "delta"})), version, partition
    return committer_for(target), None, None


def previous_manifest(out: OutputConfig) -> dict[str, Any] | None:
    """The manifest of the run output.compare_to names (see :func:`committer_at`; a table's
    latest run, of that partition, at that version). None for a folder with no run."""
    assert out.compare_to is not None
    committer, version, partition = committer_at(out, out.compare_to)
    if isinstance(committer, TableCommitter):
        return committer.find(version, partition)
    return folder.read_manifest(committer.out)
