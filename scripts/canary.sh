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
.venv-canary/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]"
.venv-canary/bin/python -m pip freeze --exclude-editable > canary-versions.txt
echo "canary: installed in $(($(date +%s) - started)) s; versions that differ from the tested set:"
.venv-canary/bin/python - <<'PY'
from crossenc.versions import canonical, tested_versions

tested = tested_versions()
for line in open("canary-versions.txt"):
    if "==" not in line:
        continue
    name, version = line.strip().split("==", 1)
    if tested.get(canonical(name)) != version:
        print(f"  {name} {version} (tested: {tested.get(canonical(name), 'not in the set')})")
PY
.venv-canary/bin/crossenc doctor  # what a user would see; exits non-zero on a known-bad release
.venv-canary/bin/python -m pytest -q -m canary -p no:cacheprovider
echo "canary: $(($(date +%s) - started)) s in all"
