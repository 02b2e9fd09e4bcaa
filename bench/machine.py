"""What a benchmark records of the machine and the packages it ran on."""

from __future__ import annotations

import contextlib
import os
import platform
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
