"""The driver's journal of written parts: what a resume reads instead of one record per part.

Writers report every file they close to the driver, which appends the parts to its journal,
one small Parquet object at a time, at most once a second (and at the end of the stream). A resume
reads the journals of the interrupted runs: a listing and one read per journal object, all at
once, whatever the number of parts. A file closed after the last journal write of a killed
driver is not known to the resume: its rows are scored again and the file is removed at the
next commit, so the journal's interval bounds what a crash loses, not what it duplicates.
"""

from __future__ import annotations

import io
import time
from dataclasses import replace

import pyarrow.parquet as pq

from crossenc.errors import storage_errors
from crossenc.output.parts import PartStats, parts_from_table, parts_table
from crossenc.storage import Location

JOURNAL = "journal"


class Journal:
    """Buffers parts and writes them to ``<staging>/journal/`` every ``every`` seconds."""

    def __init__(self, loc: Location, staging: str, every: float = 1.0) -> None:
        self.loc, self.folder, self.every = loc, f"{staging}/{JOURNAL}", every
        self.pending: list[PartStats] = []
        self.seq = 0
        self.last = time.monotonic()
        self.writes = 0

    def add(self, parts: list[PartStats]) -> None:
        """Record parts (copied: the caller may drop their metrics once folded); writes the
        journal when the interval has passed."""
        self.pending += [replace(p) for p in parts]
        if self.pending and time.monotonic() - self.last >= self.every:
            self.flush()

    def flush(self) -> None:
        """Write what is pending as one journal object."""
        self.last = time.monotonic()
        if not self.pending:
            return
        buffer = io.BytesIO()
        pq.write_table(parts_table(self.pending), buffer)
        with storage_errors("output", self.loc.uri):
            self.loc.fs.makedirs(self.folder, exist_ok=True)
            self.loc.fs.pipe_file(f"{self.folder}/{self.seq:06d}.parquet", buffer.getvalue())
        self.seq += 1
        self.writes += 1
        self.pending = []


def read_journal(loc: Location, staging: str) -> list[PartStats]:
    """Every part a run's journal records (one listing, then every object read at once)."""
    folder = f"{staging}/{JOURNAL}"
    loc.fs.invalidate_cache(folder)
    try:
        paths = [p for p in loc.fs.ls(folder, detail=False) if p.endswith(".parquet")]
    except FileNotFoundError:
        return []
    if not paths:
        return []
    blobs = loc.fs.cat(sorted(paths), on_error="omit")  # concurrent requests on object stores
    parts: list[PartStats] = []
    for path in sorted(blobs):
        try:
            parts += parts_from_table(pq.read_table(io.BytesIO(blobs[path])))
        except Exception:  # a torn journal object: its parts are scored again
            continue
    return parts
