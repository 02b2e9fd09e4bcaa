"""The versions crossenc is tested with, and the versions a run actually uses.

``crossenc/constraints.txt`` (``constraints.txt`` at the repository root links to it) is the one
source of truth for the tested set: ``scripts/setup.sh`` and CI install under it,
``infra/Dockerfile`` and ``infra/runtime_env.yaml`` pin from it (``tests/test_infra.py`` checks
that they agree), and ``crossenc doctor`` compares the installed packages with it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

CONSTRAINTS = Path(__file__).resolve().parent / "constraints.txt"

# Releases known to break crossenc, with the reason: name -> [(specifier, why)]. A range here
# is also an upper bound in pyproject.toml's dependencies, with the same reason beside it.
KNOWN_BAD: dict[str, list[tuple[str, str]]] = {
    "torch": [("<2.6", "transformers 5 turns torch off below 2.6 (no model loads)")],
}

# The packages whose versions change the scores a run writes: recorded in every manifest and
# table commit (``stack``), and compared before output.incremental reuses a stored score.
SCORING_STACK = ("crossenc", "transformers", "tokenizers", "torch")


def canonical(name: str) -> str:
    """A distribution name as PEP 503 normalises it (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@lru_cache(maxsize=1)
def tested_versions() -> dict[str, str]:
    """The tested set: canonical distribution name -> exact version, from constraints.txt."""
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" not in line:
            continue
        name, version = (part.strip() for part in line.split("==", 1))
        pins[canonical(name)] = version.split(";", 1)[0].strip()
    return pins


def same_release(a: str, b: str) -> bool:
    """Whether two versions are the same release, local tags aside (2.13.0+cpu = 2.13.0)."""
    try:
        return Version(a).public == Version(b).public
    except InvalidVersion:
        return a == b


def installed_version(name: str) -> str | None:
    """The installed distribution's version, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def known_bad(name: str, version: str) -> str | None:
    """Why ``version`` of ``name`` is known to break crossenc, or None."""
    for spec, why in KNOWN_BAD.get(canonical(name), []):
        if SpecifierSet(spec).contains(version, prereleases=True):
            return why
    return None


def stack_versions(backend: str = "torch") -> dict[str, str]:
    """The versions of the packages that make a run's scores (onnxruntime, or openvino and
    nncf, with those backends): what a manifest records beside its scores."""
    from crossenc import __version__

    extra = {"onnx": ["onnxruntime"], "openvino": ["openvino", "nncf"]}.get(backend, [])
    names = [*SCORING_STACK, *extra]
    out = {"crossenc": __version__}
    for name in names[1:]:
        out[name] = installed_version(name) or "absent"
    return out
