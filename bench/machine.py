"""What a benchmark records of the machine and the packages it ran on."""

from __future__ import annotations

import contextlib
import os
import platform
import threading
from pathlib import Path


def cpu_model() -> str:
    """lscpu's model name, else platform's."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    """The installed versions of the packages a figure depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "sentence-transformers", "onnxruntime", "ray"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def isa_caps() -> dict[str, str]:
    """The instruction-set caps this run's processes inherit (torch's kernels, oneDNN, MKL):
    how an AVX2-only CPU is emulated on a newer one; empty when none is set."""
    return {k: os.environ[k] for k in ISA_CAPS if os.environ.get(k)}


def header(repetitions: int) -> dict[str, object]:
    """The head of a whole-process benchmark's JSON: when, on what CPU (and its instruction
    sets), how many repetitions, which packages."""
    import datetime

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "isa_caps": isa_caps(),
        "repetitions": repetitions,
        "versions": versions(),
    }


class TreeMemory:
    """Samples the memory of this process and all its descendants; keeps the peak.

    A sample is the sum of every process's private resident memory (``RssAnon`` in
    /proc/PID/status) plus the shared memory in use machine-wide above its level at the start
    (``Shmem`` in /proc/meminfo: Ray's object store), so shared pages count once. Both are
    counters the kernel keeps: reading them costs microseconds and takes no lock on the
    processes' memory maps (reading smaps_rollup every 0.25 s slowed the job by 17%).
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self.at_peak: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._shmem_start = self._shmem()

    @staticmethod
    def _children() -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    kids.setdefault(ppid, []).append(int(d.name))
        return kids

    @staticmethod
    def _field(path: str, name: str) -> int:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
        return 0

    def _shmem(self) -> int:
        return self._field("/proc/meminfo", "Shmem:")

    def sample(self) -> int:
        """Private memory of the process tree plus shared memory in use since the start; keeps
        the parts of the largest sample seen in ``at_peak``."""
        kids, todo, driver, workers = self._children(), [os.getpid()], 0, 0
        private_by_pid: dict[int, int] = {}
        while todo:
            pid = todo.pop()
            todo.extend(kids.get(pid, []))
            private = self._field(f"/proc/{pid}/status", "RssAnon:")
            private_by_pid[pid] = private
            if pid == os.getpid():
                driver = private
            else:
                workers += private
        shared = max(0, self._shmem() - self._shmem_start)
        total = driver + workers + shared
        if total > self.peak:
            mib = 2**20
            self.at_peak = {
                "driver_private_mib": round(driver / mib, 1),
                "ray_processes_private_mib": round(workers / mib, 1),
                "shared_object_store_mib": round(shared / mib, 1),
                "processes": len(private_by_pid),
                "largest_processes_mib": {
                    f"{pid} {_process_name(pid)}": round(n / mib, 1)
                    for pid, n in sorted(private_by_pid.items(), key=lambda kv: -kv[1])[:6]
                },
            }
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())


def _process_name(pid: int) -> str:
    """A process's title (Ray names its workers after their task, e.g. ``ray::IDLE``)."""
    with contextlib.suppress(OSError):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return cmd.strip()[:60]
    return "?"
