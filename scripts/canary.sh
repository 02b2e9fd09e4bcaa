#!/usr/bin/env bash
# The canary: crossenc's core against today's releases, as a fresh `pip install crossenc` gets
# them. A second environment (.venv-canary, always made anew) resolves pyproject.toml's ranges
# with no constraints file (only torch is pinned, to the CPU build: a plain torch is a CUDA
# build of several GB), records the versions it got in canary-versions.txt, prints those that
# differ from the tested set, and runs the tests marked `canary`: parity with
# CrossEncoder.predict for every architecture, the missing-weights checks, a CLI job on local
# files, a job on the moto S3 server, a Delta and an Iceberg commit. An upstream release that
# breaks crossenc fails CI on the day it appears, not on a user's cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
started=$(date +%s)
rm -rf .venv-canary
"$PYTHON" -m venv .venv-canary
.venv-canary/bin/python -m pip install -q --upgrade pip
.venv-canary/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# First what a user installs (the package and its extras, no constraints), then the test tools
# beside it without moving what that resolved: the test extra's own requirements (moto,
# sentence-transformers, ...) once made pip backtrack to transformers 5.24.0 while 5.25.0 was out.
.venv-canary/bin/python -m pip install -q -e ".[onnx,tables]"
.venv-canary/bin/python -m pip freeze --exclude-editable > canary-versions.txt
.venv-canary/bin/python -m pip install -q -c canary-versions.txt -e ".[test]"
echo "canary: installed in $(($(date +%s) - started)) s; versions that differ from the tested set:"
.venv-canary/bin/python - <<'PY'
from crossenc.versions import canonical, same_release, tested_versions

tested = tested_versions()
for line in open("canary-versions.txt"):
    if "==" not in line:
        continue
    name, version = line.strip().split("==", 1)
    if not same_release(version, tested.get(canonical(name), "")):
        print(f"  {name} {version} (tested: {tested.get(canonical(name), 'not in the set')})")
PY
# The canary is only worth its name if it has today's release of what makes the scores: a
# resolver that backtracked to an older one (a --upgrade-strategy eager run here once took
# transformers 5.24.0 while 5.25.0 was out) fails it, naming the package.
.venv-canary/bin/python - <<'PY'
import re
import subprocess
import sys

from crossenc.versions import installed_version

stale = []
for name in ("transformers", "tokenizers", "ray", "pyarrow", "accelerate", "huggingface-hub"):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", name],
        capture_output=True, text=True, check=False,
    ).stdout
    newest = re.search(r"\((\S+)\)", out)
    have = installed_version(name)
    print(f"  {name}: {have} (newest on the index: {newest.group(1) if newest else '?'})")
    if newest and have != newest.group(1):
        stale.append(f"{name} {have}, not today's {newest.group(1)}")
if stale:
    sys.exit("canary: the resolver did not take today's releases: " + "; ".join(stale))
PY
.venv-canary/bin/crossenc doctor  # what a user would see; exits non-zero on a known-bad release
.venv-canary/bin/python -m pytest -q -m canary -p no:cacheprovider
echo "canary: $(($(date +%s) - started)) s in all"
