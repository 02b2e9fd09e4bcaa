"""Out of the box (``python -m bench --mode oob``): whole-process wall time of ``crossenc score``
with a preset and nothing else set, against the script a user would write instead.

Both run as fresh processes, interleaved (the order alternates every repetition), on the same
Parquet files: MiniLM-L6 pairs in 8 files.

- ``st_script``: read the Parquet with pyarrow, ``CrossEncoder.predict(batch_size=32)``, add the
  scores and ranks, write Parquet (:data:`ST_SCRIPT`);
- ``crossenc_default``: ``crossenc score --config configs/msmarco-rerank.yaml`` with only
  ``input.path``, ``output.path`` and ``model.name`` set.

``ratio`` is the script's wall time over crossenc's (above 1: crossenc is faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

ST_SCRIPT = """
import sys
import pyarrow as pa, pyarrow.parquet as pq, pyarrow.compute as pc
from sentence_transformers import CrossEncoder

src, dest, model, *backend = sys.argv[1:]
# bench.peer adds a backend and its exported file (e.g. onnx onnx/model_qint8_avx512_vnni.onnx)
kwargs = {"backend": backend[0], "model_kwargs": {"file_name": backend[1]}} if backend else {}
table = pq.read_table(src)
ce = CrossEncoder(model, **kwargs)
scores = ce.predict(
    list(zip(table["query"].to_pylist(), table["passage"].to_pylist())), batch_size=32
)
out = table.select(["qid", "doc_id"]).append_column("score", pa.array(scores))
out = out.sort_by([("qid", "ascending"), ("score", "descending")])
pq.write_table(out, dest)
"""


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds


def contenders_setup(work: Path) -> tuple[Path, Path, dict[str, str]]:
    """The MiniLM-L6 model folder, the user's script (:data:`ST_SCRIPT`) and the environment
    of the whole-process contenders (offline, crossenc's own in-process Ray)."""
    from crossenc.testing import build_minilm_cross_encoder

    model = work / "minilm-l6"
    if not model.exists():
        build_minilm_cross_encoder(model)
    script = work / "st_script.py"
    script.write_text(ST_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["HF_HUB_OFFLINE"] = "1"
    return model, script, env


def st_command(
    script: Path,
    data: Path,
    dest: Path,
    model: Path,
    python: str = sys.executable,
    backend: Sequence[str] = (),
) -> list[str]:
    """The user's script (:data:`ST_SCRIPT`) on ``data``, writing ``dest``; ``backend``: a
    sentence-transformers backend and its exported file, run by another env's ``python``."""
    return [python, str(script), str(data), str(dest), str(model), *backend]


def crossenc_command(data: Path, out: Path, model: Path, *sets: str) -> list[str]:
    """``crossenc score`` with the MS MARCO preset, ``input.path``, ``output.path`` and
    ``model.name`` set, and any further ``--set KEY=VALUE`` in ``sets``."""
    cmd = [
        str(Path(sys.executable).with_name("crossenc")),
        "score",
        "--config",
        str(ROOT / "configs" / "msmarco-rerank.yaml"),
    ]
    for kv in (f"input.path={data}", f"output.path={out}", f"model.name={model}", *sets):
        cmd += ["--set", kv]
    return cmd


def timed_fresh(
    commands: dict[str, list[str]], env: dict[str, str], outputs: dict[str, Path], name: str
) -> float:
    """Wall seconds of ``commands[name]``, its earlier output (``outputs[name]``) removed first."""
    if name in outputs:
        shutil.rmtree(outputs[name], ignore_errors=True)
    return _timed(commands[name], env)


def interleaved(
    names: Sequence[str], run: Callable[[str], float], reps: int
) -> dict[str, list[float]]:
    """Seconds of ``run(name)`` per name, ``reps`` times, the order reversed every other
    repetition (so no contender always runs first, or after the same one)."""
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            times[name].append(round(run(name), 2))
    return times


def oob(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved whole-process runs of the user's script and the default job, per size."""
    from bench.data import write_pairs
    from bench.machine import header

    work = Path(args.work)
    model, script, env = contenders_setup(work)
    result: dict[str, Any] = {
        **header(args.reps),
        "sizes": {},
    }
    for pairs in args.oob_pairs:
        data = work / f"oob-pairs-{pairs}"
        if not data.exists():
            write_pairs(data, pairs, args.seed, files=8)
        out = work / f"oob-out-{pairs}"
        contenders = {
            "st_script": st_command(script, data, work / "st.parquet", model),
            "crossenc_default": crossenc_command(data, out, model),
        }

        times = interleaved(
            list(contenders),
            partial(timed_fresh, contenders, env, {"crossenc_default": out}),
            args.reps,
        )
        med = {k: statistics.median(v) for k, v in times.items()}
        result["sizes"][str(pairs)] = {
            "wall_seconds_all_reps": times,
            "wall_seconds_median": med,
            "ratio_to_st_script": round(med["st_script"] / med["crossenc_default"], 2),
            "ratio_to_st_script_all_reps": [
                round(s / c, 2)
                for s, c in zip(times["st_script"], times["crossenc_default"], strict=True)
            ],
        }
        shutil.rmtree(out, ignore_errors=True)
    return result
