"""What a benchmark records of the machine and the packages it ran on."""

from __future__ import annotations

import contextlib
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
