"""The prepared GPU check (bench/gpu.sh) runs end to end: on a machine without a GPU its CPU
mode runs the same steps (engine per token budget, LocalScorer, the whole Ray job, the
sentence-transformers peer) with small sizes, so the script is ready when a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_runs_every_step_in_cpu_mode(ray_local, tmp_path):
    env = {
        **os.environ,
        # the whole job's step joins the suite's Ray (a GPU machine's run starts its own)
        "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
        "DEVICE": "cpu",
        "PAIRS": "64",
        "SWEEP_PAIRS": "24",
        "REPS": "1",
        "PYTHON": sys.executable,
    }
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    block = result["minilm-l6"]
    for contender in ("st_predict", "local_torch", "engine_torch", "job"):
        assert block["pairs_per_s"][contender] > 0, contender
    assert 0 < block["job_to_engine_ratio"] <= 1.5
    assert block["job_max_abs_diff_vs_st"] < 1e-5  # the job scored the pairs predict scored
    assert result["job_where_the_time_goes"]["job"]["replica_busy_seconds_median"] > 0
    sweep = json.loads((tmp_path / "gpu-sweep.json").read_text())
    assert len(sweep["sweep"]["minilm-l6"]) == 5  # every token budget measured
