"""Phase 5, account: which input rows the parts hold, what a resume can take over, the driver's
ledger of parts as they close, and the check that every row read was written, dead-lettered or
dropped exactly once."""

from __future__ import annotations

import json
from dataclasses import dataclass

from crossenc.errors import InvariantError
from crossenc.inputs.plan import InputFile
from crossenc.job.progress import Progress
from crossenc.metrics import RunMetrics
from crossenc.output.journal import Journal
from crossenc.output.parts import (
    PartStats,
    merge_ranges,
    missing_ranges,
    overlaps,
)
from crossenc.storage import Location


def coverage(parts: list[PartStats]) -> dict[str, list[list[int]]]:
    """Per input file, the row ranges the parts hold (not merged: overlaps stay visible)."""
    out: dict[str, list[list[int]]] = {}
    for part in parts:
        out.setdefault(part.input_file, []).extend(part.row_ranges())
    return out


def check_accounted(files: list[InputFile], parts: list[PartStats], run_id: str) -> None:
    """Per input file: the parts' row ranges tile its rows exactly once, and rows read = rows
    written + dead-lettered + dropped by top_k."""
    accounted: dict[str, int] = {}
    for part in parts:
        accounted[part.input_file] = accounted.get(part.input_file, 0) + part.accounted
    ranges = coverage(parts)
    wrong = []
    for f in files:
        got = ranges.pop(f.path, [])
        n = accounted.pop(f.path, 0)
        if (
            n != f.rows
            or overlaps(got)
            or missing_ranges(got, f.rows)
            or (got and max(e for _, e in got) > f.rows)
        ):
            wrong.append(f"{f.path}: read {f.rows}, accounted {n}, ranges {merge_ranges(got)}")
    wrong += [f"{path}: not an input file, {n} rows" for path, n in accounted.items()]
    if wrong:
        raise InvariantError(
            f"rows read != rows written + dead-lettered + dropped; nothing committed "
            f"(run {run_id}): " + "; ".join(wrong[:5])
        )


def usable_parts(staged: list[PartStats], files: tuple[InputFile, ...]) -> list[PartStats]:
    """The staged parts a resume can take over: whole output files (every part of a file, as
    many as each part says it has, or none), whose input files are all still in the input
    with the same row counts, holding no row that an already kept file holds."""
    rows = {f.path: f.rows for f in files}
    by_file: dict[str, list[PartStats]] = {}
    for part in staged:
        name = (part.file or part.dead_file or "").rsplit("/", 1)[-1]
        by_file.setdefault(name, []).append(part)
    kept: list[PartStats] = []
    taken: dict[str, list[list[int]]] = {}
    for name in sorted(by_file):  # run ids sort by start: the earliest run's files first
        group = list({(p.input_file, p.ranges): p for p in by_file[name]}.values())
        fits = (
            bool(name)
            and all(len(group) == p.siblings for p in group)
            and all(
                p.input_file in rows
                and (p.input_rows in (-1, rows[p.input_file]))
                and not overlaps(taken.get(p.input_file, []) + p.row_ranges())
                and max((e for _, e in p.row_ranges()), default=0) <= rows[p.input_file]
                for p in group
            )
        )
        if fits:
            kept += group
            for p in group:
                taken.setdefault(p.input_file, []).extend(p.row_ranges())
    return kept


def todo_ranges(files: tuple[InputFile, ...], parts: list[PartStats]) -> dict[str, list[list[int]]]:
    """Per input file, the row ranges no part holds yet."""
    have = coverage(parts)
    todo = {f.path: missing_ranges(have.get(f.path, []), f.rows) for f in files}
    return {path: ranges for path, ranges in todo.items() if ranges}


def rows_in(todo: dict[str, list[list[int]]]) -> int:
    """How many rows the todo ranges hold."""
    return sum(end - start for ranges in todo.values() for start, end in ranges)


class Ledger:
    """The driver's record of the parts written so far: their metrics folded into the run's,
    the journal a resume reads, and the progress line."""

    def __init__(self, output: Location, staging: str, kept: list[PartStats], rows: int) -> None:
        self.journal = Journal(output, staging)
        self.parts = list(kept)
        self.metrics = RunMetrics()
        for part in self.parts:
            self.metrics.add(json.loads(part.metrics), part.accounted, mine=False)
            part.metrics = ""  # folded in: the driver keeps only what the commit needs
        self.progress = Progress(rows)

    def on_parts(self, new: list[PartStats]) -> None:
        """Parts a writer closed: metrics folded in, journaled (with their metrics, which a
        resume folds in), kept for the commit."""
        for part in new:
            self.metrics.add(json.loads(part.metrics), part.accounted, mine=True)
        self.journal.add(new)
        for part in new:
            part.metrics = ""
        self.parts.extend(new)

    def on_progress(self, t: float, rows: int, counted: bool = False) -> None:
        """Rows handed to the writers at ``t``: the throughput timeline and the progress line
        (unless ``counted`` already, as the replicas scored them: :meth:`on_scored`)."""
        self.metrics.progress(t, rows)
        if not counted:
            self.progress.add(rows)

    def on_scored(self, rows: int) -> None:
        """Rows the replicas scored (a run that shuffles before it writes): the progress line."""
        self.progress.add(min(rows, max(self.progress.total - self.progress.done, 0)))


@dataclass
class Counts:
    """The run's rows and files, once every part is in."""

    read: int
    scored: int  # the model's rows: neither taken over nor copied from an earlier run
    written: int
    dead_lettered: int
    dropped_top_k: int
    resumed: int  # taken over from interrupted runs
    reused: int  # output.incremental: scores copied from an earlier run
    skipped_reused: int  # of those, not written (output.incremental: skip)
    files_written: int


def account(
    files: tuple[InputFile, ...], rows: int, ledger: Ledger, kept: list[PartStats], run_id: str
) -> Counts:
    """Phase 5: check that the parts tile every input row exactly once
    (:func:`check_accounted`: else nothing is committed), and count them."""
    parts = ledger.parts
    check_accounted(list(files), parts, run_id)
    resumed = sum(p.accounted for p in kept)
    reused = sum(p.reused_rows for p in parts)
    return Counts(
        read=rows,
        scored=rows - resumed - (reused - sum(p.reused_rows for p in kept)),
        written=sum(p.rows for p in parts),
        dead_lettered=sum(p.dead_rows for p in parts),
        dropped_top_k=sum(p.dropped_rows for p in parts),
        resumed=resumed,
        reused=reused,
        skipped_reused=sum(p.skipped_rows for p in parts),
        files_written=len({p.file for p in parts if p.file}),
    )
