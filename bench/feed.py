"""The data plane (``python -m bench --mode feed``): the whole job around a model that costs
nothing, against the tokenizer alone on the same pairs.

The job is ``crossenc.job.run_job.run_job`` as ``crossenc score`` runs it (Parquet in, Parquet out,
its own in-process Ray started by the job), each repetition in a fresh process, with
``CROSSENC_RUNNER=zeros``: the replicas score with
:class:`crossenc.engine.scoring.ZeroRunner`, so what is left is reading, tokenizing, handing
blocks to the scorers and writing. The summary's replica line must say ``zeros`` (checked: a
run that scored with a model is refused).

Input: MS MARCO-like seeded pairs (:func:`bench.data.write_pairs`: queries 3-10 words,
passages log-normal around 54 words, ~82 MiniLM tokens a pair) in at least 8 Parquet files
(more when ``--rows-per-file`` asks for smaller ones), ``--rows`` (its first value) rows; the
MiniLM-L6 cross-encoder folder of :func:`crossenc.testing.build_minilm_cross_encoder` (the real
MiniLM WordPiece tokenizer).

Reported, every repetition kept (contenders interleaved, the order rotating):

- ``job``: rows/s over the scoring phase (``phases.score`` of the run summary) and over the
  whole run (``wall_seconds``: inspection, Ray start, scoring, commit), and the process's wall
  time; each per core of the machine. Where the time goes: Ray Data's per-operator figures
  (tasks, remote wall and CPU seconds, rows, first start and last end in the scoring phase),
  and every process's CPU on the machine sampled from ``/proc`` five times a second, charged to
  its stage by its title (:data:`STAGES`: tokenize, read, scorer, write, driver, Ray workers
  starting, Ray's own processes, anything else on the machine) and the machine's idle time,
  over the scoring phase and before it. A job whose scoring phase saw more than 5% of the
  machine's CPU go to other processes is marked ``disturbed``;
- ``tokenizer_1_thread``: :func:`crossenc.models.tokenize.encode_pairs` with the job's ModelInfo and
  tokenizer over the same pairs in blocks of ``runtime.block_rows``, in this process, the Rust
  tokenizer's thread pool switched off (TOKENIZERS_PARALLELISM=false);
- ``tokenizer_threads``: the same with the Rust tokenizer's own threads (as many as cores);
- ``hf_tokenizer_call_1_thread``: the transformers tokenizer's own call on the pairs (what
  encode_pairs did before it encoded on the tokenizer's backend), one thread;
- ``ratio``: the job's scoring-phase rows/s per core over the one-thread encode_pairs pairs/s
  (the issue's target: at least 0.75).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MIN_FILES = 8


def _config(data: Path, model: Path, out: Path, cache: Path) -> dict[str, Any]:
    """The job's config: a score run keeping qid and doc_id, every runtime setting its default."""
    return {
        "input": {"path": str(data), "keep": ["qid", "doc_id"]},
        "model": {"name": str(model)},
        "task": "score",
        "output": {"path": str(out), "mode": "overwrite"},
        "runtime": {"cache_dir": str(cache)},
    }


def _cores() -> int:
    from crossenc.job.cluster import machine_cores

    return machine_cores()


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat, in seconds."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


class ProcessCpu:
    """Samples the CPU time of every process on the machine (``/proc``) every ``interval``
    seconds and charges each one's CPU since the last sample to its title at that moment (a
    Ray worker's title names the task or actor it runs: ``ray::MapBatches(tokenize_batch)``),
    so the CPU seconds of a run, or of a window of it, can be split by what spent them. The
    machine's idle time is sampled alongside (``/proc/stat``)."""

    def __init__(self, interval: float = 0.2) -> None:
        import threading

        self.interval, self._stop = interval, threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")
        self.samples: list[tuple[float, float, dict[str, float]]] = []  # (t, idle s, by title)
        self.pids: dict[str, set[int]] = {}  # the processes seen under each title
        self.workers: set[int] = set()  # Ray worker processes that started during the run
        self._new: set[int] = set()
        self._last: dict[int, float] = {}
        self._idle = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _title(argv: list[str]) -> str:
        key = argv[0].rsplit("/", 1)[-1][:80]
        if key.startswith("python"):  # the driver, or one of Ray's Python daemons
            script = [a for a in argv[1:] if a and not a.startswith("-")][:1]
            key += " " + (script[0].rsplit("/", 1)[-1] if script else "")
        return key

    def _sample(self, first: bool = False) -> None:
        now = time.perf_counter()
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = (fields[3] + fields[4]) / self.tick
        deltas: dict[str, float] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
                cpu = (int(stat[11]) + int(stat[12])) / self.tick
                argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except (OSError, IndexError, ValueError):
                continue
            pid = int(d.name)
            before = self._last.get(pid)
            self._last[pid] = cpu
            if before is None:
                before = cpu if first else 0.0  # a process started since: all of its CPU
                if not first:
                    self._new.add(pid)
            if pid in self._new and argv[0].startswith("ray::"):
                self.workers.add(pid)
            if cpu > before and not first:
                key = self._title(argv)
                deltas[key] = deltas.get(key, 0.0) + cpu - before
                self.pids.setdefault(key, set()).add(pid)
        if not first:
            self.samples.append((now, idle - self._idle, deltas))
        self._idle = idle

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> ProcessCpu:
        self._sample(first=True)  # what each process had spent before: not charged
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def by_title(self, start: float = -math.inf, end: float = math.inf) -> dict[str, float]:
        """CPU seconds per title in the samples taken within [start, end]."""
        out: dict[str, float] = {}
        for t, _, deltas in self.samples:
            if start <= t <= end:
                for k, v in deltas.items():
                    out[k] = out.get(k, 0.0) + v
        return out

    def idle(self, start: float = -math.inf, end: float = math.inf) -> float:
        """Idle core-seconds of the machine in the samples taken within [start, end]."""
        return sum(i for t, i, _ in self.samples if start <= t <= end)

    def top(self, n: int = 15) -> dict[str, list[float]]:
        """The titles that spent the most CPU seconds over the run, largest first, each with
        the number of processes seen under it."""
        ranked = sorted(self.by_title().items(), key=lambda kv: -kv[1])[:n]
        return {k: [round(v, 2), len(self.pids[k])] for k, v in ranked}


STAGES = (  # what a process title's CPU is charged to: the first stage one of whose words it holds
    ("tokenize", ("tokenize",)),
    ("read", ("read_row_groups",)),
    ("scorer", ("ScorerReplica",)),
    ("write", ("write_block", "WriterActorImpl")),
    ("driver", ("bench.feed",)),
    ("ray_worker_start", ("ray::IDLE", "default_worker.py")),
)


RAY_DAEMONS = ("ray::", "raylet", "gcs_server", "dashboard", "agent.py", "monitor.py")


def stage_of(title: str) -> str:
    """The pipeline stage a process title belongs to; ``ray_other`` for Ray's own processes
    (its daemons, Ray Data's actors), ``other`` for the rest of the machine."""
    for stage, words in STAGES:
        if any(w in title for w in words):
            return stage
    return "ray_other" if any(w in title for w in RAY_DAEMONS) else "other"


def stages(cpu: ProcessCpu, start: float, end: float, cores: int) -> dict[str, float]:
    """Core-seconds of the window [start, end] by stage, the machine's idle ones, and the
    window's core-seconds in all (``cores`` x its length)."""
    out: dict[str, float] = {}
    for title, seconds in cpu.by_title(start, end).items():
        stage = stage_of(title)
        out[stage] = out.get(stage, 0.0) + seconds
    out = {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}
    out["idle"] = round(cpu.idle(start, end), 2)
    out["window_core_seconds"] = round(cores * (end - start), 2)
    return out


def _operators(summary: Any, origin: float) -> list[dict[str, Any]]:
    """Ray Data's per-operator figures of an executed dataset (parents first); ``start_s`` and
    ``end_s``: its first task's start and last task's end, seconds after ``origin`` (the
    scoring phase's start, on the perf_counter clock every process on the machine shares)."""
    out: list[dict[str, Any]] = []
    chain = []
    node = summary
    while node is not None:
        chain.append(node)
        node = node.parents[0] if node.parents else None
    for stats in reversed(chain):
        for op in stats.operators_stats:

            def total(s: Any) -> float | None:
                return round(float(s.sum), 3) if s is not None else None

            def since(t: float | None) -> float | None:
                return round(t - origin, 3) if t is not None and abs(t) != float("inf") else None

            out.append(
                {
                    "operator": op.operator_name,
                    "tasks": int(op.wall_time.count) if op.wall_time is not None else None,
                    "remote_wall_seconds": total(op.wall_time),
                    "remote_cpu_seconds": total(op.cpu_time),
                    "udf_seconds": total(op.function_body_time),
                    "rows_out": int(op.output_num_rows.sum) if op.output_num_rows else None,
                    "operator_seconds": round(float(op.time_total_s), 3),
                    "start_s": since(op.earliest_start_time),
                    "end_s": since(op.latest_end_time),
                }
            )
    return out


def child(spec_path: str) -> None:
    """One job in this (fresh) process: run_job as the CLI runs it; writes its figures as JSON.
    The dataset is captured on its way out of ``build_dataset`` to read its stats afterwards."""
    import logging

    from crossenc.config import build_config
    from crossenc.job import passes, run_job
    from crossenc.job.progress import Progress

    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(Path(spec_path).read_text())
    built: list[Any] = []
    build = passes.build_dataset

    def capture(*args: Any, **kwargs: Any) -> Any:
        marks.setdefault("build_dataset", time.perf_counter())
        ds = build(*args, **kwargs)
        built.append(ds)
        return ds

    passes.build_dataset = capture
    marks: dict[str, float] = {}  # perf_counter times of the scoring phase's first steps
    score_pass, add = passes.score_pass, Progress.add

    def timed_pass(*args: Any, **kwargs: Any) -> Any:
        marks.setdefault("score_pass", time.perf_counter())
        return score_pass(*args, **kwargs)

    def first_rows(self: Any, rows: int) -> None:
        marks.setdefault("first_rows_written", time.perf_counter())
        add(self, rows)

    passes.score_pass = timed_pass
    Progress.add = first_rows  # type: ignore[method-assign]
    cfg = build_config(spec["config"])
    busy0, total0 = _cpu_busy()
    t0 = time.perf_counter()
    with ProcessCpu() as cpu:
        result = run_job.run_job(cfg)
    ended = time.perf_counter()
    seconds = ended - t0
    busy1, total1 = _cpu_busy()
    summary = result.summary
    phases = summary["phases"]
    # the scoring phase's start (the summary and commit after it take milliseconds)
    origin = ended - phases["cleanup"] - phases["commit"] - phases["score"]
    stats = [_operators(ds.get_stats_summary(), origin) for ds in built]
    import ray

    session = ray._private.worker._global_node.get_session_dir_path()
    Path(spec["result"]).write_text(
        json.dumps(
            {
                "run_job_seconds": round(seconds, 3),
                "rows_scored": result.rows_scored,
                "rows_written": result.rows_written,
                "files_written": result.files_written,
                "wall_seconds": summary["wall_seconds"],
                "phases": summary["phases"],
                "replicas": summary["replicas"],
                "machine_cpu_busy_fraction": round((busy1 - busy0) / max(total1 - total0, 1e-9), 3),
                "operators": stats,
                "cpu_seconds_by_process": cpu.top(),
                "core_seconds_scoring_phase": stages(cpu, origin, ended, _cores()),
                "core_seconds_before_scoring": stages(cpu, t0, origin, _cores()),
                "ray_workers_started": len(cpu.workers),
                "ray_session": session,
                "scoring_phase_marks_s": {k: round(v - origin, 3) for k, v in marks.items()},
            }
        )
    )


def _run_job(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    spec_path, result_path = work / "feed-spec.json", work / "feed-result.json"
    spec = {**spec, "result": str(result_path)}
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    shutil.rmtree(spec["config"]["output"]["path"], ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"CROSSENC_RUNNER": "zeros", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.feed", str(spec_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    process_seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"feed job exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    res = json.loads(result_path.read_text())
    runs = {r.get("runs") for r in res["replicas"]}
    if not runs or any("zeros" not in str(r) for r in runs):
        raise RuntimeError(f"CROSSENC_RUNNER=zeros did not take effect: replicas ran {runs}")
    res["process_seconds"] = round(process_seconds, 3)
    shutil.rmtree(spec["config"]["output"]["path"], ignore_errors=True)
    return res


def _tokenizer(
    cfg: Any, texts_a: list[str], texts_b: list[str], threads: bool, plain: bool = False
) -> dict[str, float]:
    """Pairs/s of encode_pairs (``plain``: of the transformers tokenizer's own call with the
    job's truncation, what encode_pairs was before it encoded on the backend) over the pairs in
    blocks of runtime.block_rows, in this process; ``cpu_share``: its CPU time over its wall
    time (under 0.95 on one thread: it was kept from its core part of the time)."""
    from crossenc.models.describe import describe_model
    from crossenc.models.load import load_tokenizer
    from crossenc.models.tokenize import encode_pairs

    info = describe_model(cfg.model, cfg.runtime.cache_dir)
    tok = load_tokenizer(cfg.model, info.source)
    step = cfg.runtime.block_rows

    def encode(a: list[str], b: list[str]) -> None:
        if plain:
            tok(a, b, truncation=cfg.model.truncation, max_length=info.max_length)
        else:
            encode_pairs(tok, info, a, b, cfg.model.truncation)

    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads else "false"
    try:
        encode(texts_a[:step], texts_b[:step])  # warm
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(texts_a), step):
            encode(texts_a[i : i + step], texts_b[i : i + step])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {
            "pairs_per_second": round(len(texts_a) / wall, 1),
            "cpu_share": round(cpu / wall, 3),
        }
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


DISTURBED = 0.05  # a job whose scoring phase saw more CPU than this share spent outside the run


def feed(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved repetitions of the whole job (zeros runner) and the tokenizer alone."""
    import pyarrow.parquet as pq

    from bench.data import write_pairs
    from bench.machine import cpu_model, versions
    from crossenc.config import build_config
    from crossenc.job.cluster import machine_cores
    from crossenc.testing import build_minilm_cross_encoder

    work = Path(args.work)
    rows = int(args.rows[0])
    files = max(MIN_FILES, -(-rows // args.rows_per_file))
    cores = machine_cores()
    model = work / "minilm-l6"
    if not (model / "config.json").exists():
        build_minilm_cross_encoder(model)
    data = work / f"feed-pairs-{rows}-{files}-{args.seed}"
    if not data.exists():
        tmp = data.with_name(data.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_pairs(tmp, rows, args.seed, files=files)
        tmp.rename(data)
    config = _config(data, model, work / "feed-out", work / "cache")
    cfg = build_config(config)
    table = pq.read_table(data, columns=["query", "passage"])
    texts_a, texts_b = table["query"].to_pylist(), table["passage"].to_pylist()
    contenders = {
        "job": lambda: _run_job({"config": config}, work),
        "tokenizer_1_thread": lambda: _tokenizer(cfg, texts_a, texts_b, threads=False),
        "tokenizer_threads": lambda: _tokenizer(cfg, texts_a, texts_b, threads=True),
        "hf_tokenizer_call_1_thread": lambda: _tokenizer(
            cfg, texts_a, texts_b, threads=False, plain=True
        ),
    }
    names = list(contenders)
    reps: dict[str, list[Any]] = {k: [] for k in names}
    for rep in range(args.reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            reps[name].append(contenders[name]())
    jobs = reps["job"]

    def rate(res: dict[str, Any], seconds: float) -> float:
        return round(res["rows_scored"] / seconds, 1)

    scoring = [rate(j, j["phases"]["score"]) for j in jobs]
    whole = [rate(j, j["wall_seconds"]) for j in jobs]
    process = [rate(j, j["process_seconds"]) for j in jobs]
    tok = {k: [r["pairs_per_second"] for r in reps[k]] for k in names if k != "job"}
    tok1 = tok["tokenizer_1_thread"]
    med = statistics.median
    per_core = med(scoring) / cores
    for j in jobs:
        window = j["core_seconds_scoring_phase"]
        j["disturbed"] = window.get("other", 0.0) > DISTURBED * window["window_core_seconds"]
    breakdown: dict[str, float] = {}
    for stage in {k for j in jobs for k in j["core_seconds_scoring_phase"]}:
        breakdown[stage] = med(j["core_seconds_scoring_phase"].get(stage, 0.0) for j in jobs)
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {cores} cores",
        "versions": versions(),
        "rows": rows,
        "input_files": files,
        "block_rows": cfg.runtime.block_rows,
        "repetitions": args.reps,
        "model": "MiniLM-L6 cross-encoder folder (real MiniLM WordPiece tokenizer), "
        "CROSSENC_RUNNER=zeros",
        "job_rows_per_second_scoring_phase": {"median": med(scoring), "all_reps": scoring},
        "job_rows_per_second_whole_run": {"median": med(whole), "all_reps": whole},
        "job_rows_per_second_process": {"median": med(process), "all_reps": process},
        "job_rows_per_second_per_core_scoring_phase": round(per_core, 1),
        "job_rows_per_second_per_core_whole_run": round(med(whole) / cores, 1),
        **{
            f"{k}_pairs_per_second": {
                "median": med(v),
                "all_reps": v,
                "cpu_share_all_reps": [r["cpu_share"] for r in reps[k]],
            }
            for k, v in tok.items()
        },
        "ratio_job_per_core_to_tokenizer_1_thread": round(per_core / med(tok1), 3),
        "ratio_all_reps": [round(s / cores / t, 3) for s, t in zip(scoring, tok1, strict=True)],
        "ratio_job_per_core_to_hf_tokenizer_call_1_thread": round(
            per_core / med(tok["hf_tokenizer_call_1_thread"]), 3
        ),
        "disturbed_reps": [i for i, j in enumerate(jobs) if j["disturbed"]],
        "scoring_phase_core_seconds_by_stage_median": dict(
            sorted(breakdown.items(), key=lambda kv: -kv[1])
        ),
        "jobs": jobs,
    }


if __name__ == "__main__":
    child(sys.argv[1])
