"""output.format iceberg: a run's files added to an Iceberg table in one commit (pyiceberg).

The catalog is output.catalog: pyiceberg's SqlCatalog on a SQLite file (no server; by default
``<output.path>/_catalog.db``) or a REST catalog. The table is output.table, created at the
first commit with its location at output.path (so the writers' files already lie under it)
and, with output.partition_by, identity partitions on those columns. A run is one
transaction: ``add_files`` of the writers' Parquet files (their footers give the statistics
and partition values; nothing is rewritten), after a ``delete`` of the run's partition (the
whole table unpartitioned) with output.mode overwrite; both snapshots land in one catalog
update. Every snapshot's summary carries the crossenc metadata
(:mod:`crossenc.output.tables`). A table's "version" here is its snapshots' sequence number.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa

from crossenc.config import OutputConfig
from crossenc.output.tables import (
    DataFile,
    TableCommit,
    TableCommitter,
    TableConflictError,
    store_options,
)
from crossenc.storage import is_remote

CATALOG_FILE = "_catalog.db"  # the default SQLite catalog, under a local output.path


ICEBERG_OPTIONS = {
    "endpoint_url": "s3.endpoint",
    "key": "s3.access-key-id",
    "secret": "s3.secret-access-key",
    "token": "s3.session-token",
    "region": "s3.region",
    "anon": "s3.anonymous",
}


def file_io_properties(out: OutputConfig) -> dict[str, str]:
    """pyiceberg's S3 FileIO properties for the output's storage options."""
    return store_options(out.storage, ICEBERG_OPTIONS)


def warehouse(out: OutputConfig) -> str:
    """The catalog's warehouse: output.path as a URI."""
    if is_remote(out.path):
        return out.path.rstrip("/")
    return "file://" + os.path.abspath(os.path.expanduser(out.path))


def load_catalog(out: OutputConfig) -> Any:
    """The pyiceberg catalog output.catalog describes."""
    spec = out.catalog
    props = {"warehouse": warehouse(out), **file_io_properties(out), **spec.properties}
    if spec.type == "rest":
        from pyiceberg.catalog.rest import RestCatalog

        return RestCatalog(spec.name, uri=spec.uri, **props)
    from pyiceberg.catalog.sql import SqlCatalog

    uri = spec.uri or os.path.join(os.path.abspath(os.path.expanduser(out.path)), CATALOG_FILE)
    if "://" not in uri:  # a SQLite file path
        path = os.path.abspath(os.path.expanduser(uri))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        uri = f"sqlite:///{path}"
    return SqlCatalog(spec.name, uri=uri, **props)


class IcebergCommitter(TableCommitter):
    """output.table in output.catalog, its data and metadata at output.path."""

    def __init__(self, out: OutputConfig) -> None:
        super().__init__(out)
        self.catalog = load_catalog(out)
        assert out.table is not None  # the config requires it for this format
        self.identifier = out.table

    def load(self) -> Any:
        """The table's current metadata, None when there is no table."""
        return self._table()

    def _table(self) -> Any:
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        try:
            return self.catalog.load_table(self.identifier)
        except (NoSuchTableError, NoSuchNamespaceError):
            return None

    def version(self) -> int:
        """The last sequence number (0: a table without snapshots), -1 without a table."""
        table = self._table()
        return -1 if table is None else int(table.metadata.last_sequence_number)

    def commits_since(self, base: int, table: Any = None) -> list[TableCommit]:
        """The snapshots after sequence number ``base``, oldest first."""
        table = table if table is not None else self._table()
        if table is None:
            return []
        commits = []
        for snap in table.snapshots():
            if (snap.sequence_number or 0) <= base:
                continue
            summary = snap.summary
            extra = dict(summary.additional_properties) if summary is not None else {}
            props = {k: v for k, v in extra.items() if k.startswith("crossenc.")}
            operation = str(summary.operation.value) if summary is not None else ""
            commits.append(
                TableCommit(snap.sequence_number or 0, snap.timestamp_ms, operation, props)
            )
        return sorted(commits, key=lambda c: c.version)

    def _create(self, schema: pa.Schema) -> Any:
        """The table, with its partition spec, in one catalog update; a run that created it
        (or its namespace) meanwhile wins, and its table is loaded."""
        namespace = self.identifier.rsplit(".", 1)[0]
        try:
            self.catalog.create_namespace_if_not_exists(namespace)
        except Exception:  # two first runs at once: the SQL catalog's unique key refuses one
            if not self._namespace_exists(namespace):
                raise
        try:
            tx = self.catalog.create_table_transaction(
                self.identifier, schema=schema, location=warehouse(self.out)
            )
            if self.out.partition_by:
                with tx.update_spec() as update:
                    for column in self.out.partition_by:
                        update.add_identity(column)
            tx.commit_transaction()
        except Exception as err:
            if self._table() is None:  # not the race of two first runs
                raise
            raise TableConflictError(f"Iceberg table created meanwhile: {err}") from err
        return self.catalog.load_table(self.identifier)

    def _namespace_exists(self, namespace: str) -> bool:
        from pyiceberg.exceptions import NoSuchNamespaceError

        try:
            self.catalog.load_namespace_properties(namespace)
        except NoSuchNamespaceError:
            return False
        return True

    def write(
        self,
        files: list[DataFile],
        schema: pa.Schema | None,
        overwrite: bool,
        meta: dict[str, str],
        table: Any,
    ) -> None:
        """One catalog commit on top of ``table``'s snapshot: the partition's delete
        (overwrite) and ``add_files``."""
        from pyiceberg.exceptions import CommitFailedException
        from pyiceberg.expressions import AlwaysTrue, And, EqualTo

        if table is None:
            if schema is None:
                raise ValueError("the run wrote no rows: there is no schema to create a table")
            table = self._create(schema)
        # pyiceberg rebases an overtaken append and retries it on its own; crossenc must see
        # what overtook it first (another run of the same partition), so: no retries here.
        # The property is set on this process's copy of the metadata only.
        props = {**table.metadata.properties, "commit.retry.num-retries": "0"}
        table.metadata = table.metadata.model_copy(update={"properties": props})
        tx = table.transaction()
        if overwrite:
            terms = [EqualTo(c, v) for c, v in self.out.partition_value.items()]
            where: Any = AlwaysTrue() if not terms else terms[0]
            for term in terms[1:]:
                where = And(where, term)
            tx.delete(where, snapshot_properties=meta)
        if files:
            tx.add_files(
                [self.file_uri(f.path) for f in files],
                snapshot_properties=meta,
                check_duplicate_files=False,  # run-unique names; the run id check guards retries
            )
        try:
            tx.commit_transaction()
        except CommitFailedException as err:
            raise TableConflictError(f"Iceberg commit overtaken: {err}") from err

    def live_files(self) -> list[str]:
        """The URIs of the table's current data files."""
        table = self._table()
        return [] if table is None else [t.file.file_path for t in table.scan().plan_files()]
