"""output.format delta: a run's files added to a Delta Lake table in one commit (deltalake).

The writers' Parquet files, already under the table's folder, become ``add`` actions of one
transaction (``create_table_with_add_actions`` for the first run, else
``DeltaTable.create_write_transaction``): no row is read or written again. The commit's
``commitInfo`` carries the crossenc metadata (:mod:`crossenc.output.tables`). With
output.mode overwrite the same commit removes the files of the run's partition (every file,
unpartitioned). delta-rs retries a commit another one overtook; here it may not (0 retries),
so that crossenc checks the new commits before it tries again.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa

from crossenc.output.tables import (
    DataFile,
    TableCommit,
    TableCommitter,
    TableConflictError,
    delta_storage_options,
)


def _table_uri(path: str) -> str:
    return path.rstrip("/")


class DeltaCommitter(TableCommitter):
    """A Delta Lake table at output.path, local or s3:// (the output's storage options)."""

    def _options(self) -> dict[str, str]:
        return delta_storage_options(self.out.storage)

    def load(self) -> Any:
        """The DeltaTable at its latest version, None when there is none."""
        return self._table()

    def _table(self) -> Any:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(_table_uri(self.out.path), storage_options=self._options())
        except TableNotFoundError:
            return None

    def version(self) -> int:
        """The table's version, -1 when there is no table."""
        table = self._table()
        return -1 if table is None else int(table.version())

    def commits_since(self, base: int, table: Any = None) -> list[TableCommit]:
        """The commits after version ``base``: the newest ``version - base`` of the history."""
        table = table if table is not None else self._table()
        if table is None or table.version() <= base:
            return []
        commits = []
        for entry in table.history(limit=int(table.version()) - base):
            props = {k: str(v) for k, v in entry.items() if k.startswith("crossenc.")}
            mode = (entry.get("operationParameters") or {}).get("mode", "")
            operation = f"{entry.get('operation', '')} {mode}".strip().lower()
            commits.append(
                TableCommit(int(entry["version"]), entry.get("timestamp"), operation, props)
            )
        return sorted((c for c in commits if c.version > base), key=lambda c: c.version)

    def write(
        self,
        files: list[DataFile],
        schema: pa.Schema | None,
        overwrite: bool,
        meta: dict[str, str],
        table: Any,
    ) -> None:
        """One Delta commit adding ``files`` on top of ``table``'s version (see the module
        docstring)."""
        from deltalake import CommitProperties, Schema
        from deltalake.exceptions import CommitFailedError, DeltaError
        from deltalake.transaction import AddAction, create_table_with_add_actions

        now = int(time.time() * 1000)
        actions = [
            AddAction(
                f.name,
                f.size,
                dict(self.out.partition_value),
                now,
                True,
                json.dumps({"numRecords": f.rows}),
            )
            for f in files
        ]
        props = CommitProperties(custom_metadata=meta, max_commit_retries=0)
        partition_by = list(self.out.partition_by) or None
        try:
            if table is None:
                if schema is None:
                    raise ValueError("the run wrote no rows: there is no schema to create a table")
                create_table_with_add_actions(
                    _table_uri(self.out.path),
                    Schema.from_arrow(schema),
                    actions,
                    mode="error",
                    partition_by=partition_by,
                    storage_options=self._options(),
                    commit_properties=props,
                )
                return
            filters = [(c, "=", v) for c, v in self.out.partition_value.items()] or None
            table.create_write_transaction(
                actions,
                mode="overwrite" if overwrite else "append",
                schema=schema if schema is not None else table.schema(),
                partition_by=partition_by,
                partition_filters=filters if overwrite else None,
                commit_properties=props,
            )
        except CommitFailedError as err:
            raise TableConflictError(f"Delta commit overtaken: {err}") from err
        except DeltaError as err:
            if "already exists" in str(err).lower():  # two first runs created it at once
                raise TableConflictError(f"Delta table created meanwhile: {err}") from err
            raise

    def live_files(self, version: int | None = None) -> list[str]:
        """The URIs of the table's data files (at ``version``; the latest when None)."""
        from deltalake import DeltaTable

        table = DeltaTable(
            _table_uri(self.out.path), version=version, storage_options=self._options()
        )
        return table.file_uris()
