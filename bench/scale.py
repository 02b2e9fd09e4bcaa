"""``python -m bench --mode scale``: the control plane's cost as the number of parts grows.

A *part* is the bookkeeping record of one input file's rows in one output file: a run over
10^5 input files writes 10^5 parts, whatever the model. Scoring costs nothing here (the
output rows are made up), so what is measured is the store: for 10^3, 10^4 and 10^5 parts
(100 input files to an output file, as a billion rows in 10^5 files of 10^4 rows with
1,000,000-row output files), on the moto S3 server behind a request-counting proxy and on local
disk, the seconds and requests of each phase:

- ``stage``: the output files written (one PUT each, 16 at a time) and journaled as the driver
  does (one object a second);
- ``resume``: what a resume of that interrupted run reads and decides (staged_parts +
  usable_parts: which files and row ranges it keeps);
- ``commit``: the commit (record, manifest, summary, _SUCCESS, cleanup);
- ``inspect``: the job's start (and ``validate``'s, ``plan``'s) over as many input files as
  parts (written first, not timed): a listing and the footers of an even sample of
  ``input.inspect_files`` (2,000); ``inspect_all``: every footer, up to 10^4 files.

Each size runs in its own process, so its peak resident memory (``driver_peak_mib``) is its own.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

INPUTS_PER_FILE = 100  # input files whose rows one output file holds


def _counts(proxy: Any) -> dict[str, int]:
    return dict(proxy.requests_by_method()) if proxy is not None else {}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    return {k: v for k, v in sorted(out.items()) if v}


class Phases:
    """Seconds and requests of each phase."""

    def __init__(self, proxy: Any) -> None:
        self.proxy, self.out = proxy, {}

    def run(self, name: str, fn: Any) -> Any:
        before, t = _counts(self.proxy), time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t
        requests = _delta(before, _counts(self.proxy))
        self.out[name] = {"seconds": round(seconds, 3), "requests": sum(requests.values())}
        if requests:
            self.out[name]["by_method"] = requests
        return result


def _peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not carried over from the
    parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def one(
    store: str, parts: int, endpoint: str | None, inspect_files: int, inspect_all: int = 0
) -> dict[str, Any]:
    """Stage, resume-read and commit ``parts`` parts on one store; returns the phases."""
    from crossenc.config import OutputConfig, StorageConfig, build_config
    from crossenc.inputs.plan import InputFile, inspect_input, inspect_start
    from crossenc.job.accounting import check_accounted, usable_parts
    from crossenc.output.commit import (
        Manifest,
        RunRecord,
        commit,
        staged_parts,
        staging_dir,
        write_run_record,
    )
    from crossenc.output.journal import Journal
    from crossenc.output.parts import PartStats, new_run_id, part_file_name
    from crossenc.storage import resolve
    from crossenc.testing.faultproxy import FaultProxy

    proxy = FaultProxy(endpoint).start() if store == "s3" else None
    work = Path(tempfile.mkdtemp(prefix="crossenc-scale-"))
    try:
        if proxy is not None:
            storage = StorageConfig(endpoint_url=proxy.url, key="k", secret="s")
            bucket = f"scale-{uuid.uuid4().hex[:8]}"
            resolve(f"s3://{bucket}", storage).fs.mkdir(bucket)
            out = OutputConfig(path=f"s3://{bucket}/out", storage=storage)
            inp_uri = f"s3://{bucket}/in"
        else:
            storage = StorageConfig()
            out = OutputConfig(path=str(work / "out"))
            inp_uri = str(work / "in")
        loc = resolve(out.path, out.storage)
        phases = Phases(proxy)
        files = parts // INPUTS_PER_FILE
        inputs = tuple(InputFile(f"in/{i:06d}.parquet", 1, (1,)) for i in range(parts))
        buffer = io.BytesIO()
        pq.write_table(
            pa.table({"pair_id": np.arange(INPUTS_PER_FILE), "score": np.zeros(100)}), buffer
        )
        blob = buffer.getvalue()
        run_id = new_run_id()
        write_run_record(out, RunRecord(run_id, "cfg", {}, 0))
        loc.fs.makedirs(loc.path, exist_ok=True)
        journal = Journal(loc, staging_dir(loc, run_id))

        def write(k: int) -> list[PartStats]:
            path = loc.join(part_file_name(run_id, "w0", k))
            loc.fs.pipe_file(path, blob)
            return [
                PartStats(
                    f"in/{k * INPUTS_PER_FILE + j:06d}.parquet",
                    path,
                    1,
                    None,
                    0,
                    0,
                    run_id,
                    "[[0, 1]]",
                    "{}",
                    1,
                    INPUTS_PER_FILE,
                )
                for j in range(INPUTS_PER_FILE)
            ]

        def stage() -> list[PartStats]:
            staged: list[PartStats] = []
            with ThreadPoolExecutor(16) as pool:
                for new in pool.map(write, range(files)):
                    journal.add(new)
                    staged += new
            journal.flush()
            return staged

        phases.run("stage", stage)
        resumed = RunRecord(new_run_id(), "cfg", {}, 0)
        kept = phases.run("resume", lambda: usable_parts(staged_parts(out, resumed), inputs))
        assert len(kept) == parts, (len(kept), parts)
        check_accounted(list(inputs), kept, resumed.run_id)
        manifest = Manifest(
            resumed.run_id,
            [],
            [],
            [{"path": f.path, "rows": 1} for f in inputs],
            [],
            parts,
            parts,
            0,
            0,
            {},
            "cfg",
            {},
            "bench",
            [run_id],
        )
        phases.run("commit", lambda: commit(out, manifest, kept, 0))
        result: dict[str, Any] = {
            "parts": parts,
            "output_files": files,
            "journal_objects": journal.writes,
            "phases": phases.out,
        }
        if inspect_files:
            fs = resolve(inp_uri, storage).fs
            small = io.BytesIO()
            pq.write_table(pa.table({"query": ["q"] * 4, "passage": ["p"] * 4}), small)
            data = small.getvalue()
            base = inp_uri.split("://", 1)[-1]
            fs.makedirs(base, exist_ok=True)
            fs.pipe({f"{base}/{i:06d}.parquet": data for i in range(inspect_files)})
            cfg = build_config(
                {
                    "input": {"path": inp_uri, "storage": storage.model_dump(mode="json")},
                    "output": {"path": str(work / "unused")},
                }
            )
            # The job's start (and validate's, plan's): a listing and the footers of an even
            # sample of input.inspect_files; the rest are read while the run scores.
            start = phases.run("inspect", lambda: inspect_start(cfg, cfg.input.inspect_files))
            assert len(start[0]) + len(start[2]) == inspect_files
            if inspect_files <= inspect_all:  # every footer, as a run reads them in the end
                found = phases.run("inspect_all", lambda: inspect_input(cfg)[0])
                assert len(found) == inspect_files
            result["input_files"] = inspect_files
        for name, phase in phases.out.items():
            by_file = name.startswith("inspect")
            per = inspect_files if by_file else result["parts"]
            unit = "file" if by_file else "part"
            phase[f"requests_per_{unit}"] = round(phase["requests"] / per, 4)
            phase[f"ms_per_{unit}"] = round(1000 * phase["seconds"] / per, 4)
        result["driver_peak_mib"] = _peak_rss_mib()
        return result
    finally:
        if proxy is not None:
            proxy.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def scale(args: Any) -> dict[str, Any]:
    """Every (store, size) in a fresh process; moto runs in this one."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    from tests.conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    with contextlib.redirect_stdout(sys.stderr):  # moto announces itself on stdout
        server.start()
    from bench.machine import cpu_model

    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "store_s3": "moto server on loopback, behind a request-counting proxy",
        "inputs_per_output_file": INPUTS_PER_FILE,
        "sizes": args.parts,
        "stores": {},
    }
    try:
        for store in args.stores:
            results["stores"][store] = []
            for parts in args.parts:
                cmd = [
                    sys.executable,
                    "-m",
                    "bench.scale",
                    store,
                    str(parts),
                    f"http://127.0.0.1:{port}",
                    str(parts),
                    str(args.max_inspect_files),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode:
                    raise RuntimeError(proc.stderr[-3000:])
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                print(json.dumps({store: row}), file=sys.stderr)
                results["stores"][store].append(row)
    finally:
        server.stop()
    return results


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)
    store, parts, endpoint, inspect, inspect_all = sys.argv[1:6]
    print(json.dumps(one(store, int(parts), endpoint, int(inspect), int(inspect_all))))
