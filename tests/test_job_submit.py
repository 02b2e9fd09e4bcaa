"""The real cluster path: a Ray head started by the test, the job sent with `ray job submit`."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import read_input, read_output

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def submit(url: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`ray job submit` from the repository root, waiting while the head's job agent starts."""
    deadline = time.monotonic() + 120
    while True:
        proc = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                url,
                "--working-dir",
                ".",
                "--",
                "python",
                "jobs/score.py",
                *args,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if "No available agent" not in proc.stderr or time.monotonic() > deadline:
            return proc
        time.sleep(2)


@pytest.mark.slow
def test_ray_job_submit_runs_the_job(ray_head, models, pairs_dir, tmp_path):
    url, env = ray_head
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"path": str(pairs_dir), "keep": ["qid", "doc_id"]},
                "model": {"name": str(models[("bert", 1)])},
                "task": "rerank",
                "rerank": {"group_by": "qid", "top_k": 2},
                "output": {"path": str(tmp_path / "out")},
            }
        )
    )
    proc = submit(url, env, "--config", str(config))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"rows read\s+300\n", proc.stdout)
    assert re.search(r"rows written\s+60\n", proc.stdout)
    out = read_output(tmp_path / "out")
    assert out.num_rows == 60 == read_input(pairs_dir).num_rows // 10 * 2
    assert sorted(set(out.column("rank").to_pylist())) == [1, 2]
    assert (tmp_path / "out" / "_SUCCESS").exists()

    # A failing job makes `ray job submit` fail, with the config error in its logs.
    proc = submit(url, env, "--config", str(config), "--set", "task=reranking")
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    assert "task: Input should be 'score', 'classify', 'rerank', 'evaluate' or 'mine'" in said
    # the entrypoint's exit code (2: config error) reaches the submitter in the status message
    assert "failed with exit code 2" in proc.stdout + proc.stderr
