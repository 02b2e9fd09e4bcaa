"""The real cluster path: a Ray head started by the test, the job sent with `ray job submit`."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from tests.helpers import read_input, read_output

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture()
def ray_head(tmp_path):
    """A Ray head on 127.0.0.1 with its own ports, temp dir and auth token; stopped afterwards."""
    dash = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # jobs run this environment's python
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep Ray on loopback, not the host's IP
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    env.pop("RAY_ADDRESS", None)
    temp = Path("/tmp") / f"ray-{secrets.token_hex(3)}"  # short: socket paths have a length limit
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={free_port()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--disable-usage-stats",
            # Own agent ports: the defaults may be held by another Ray on this machine.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--num-cpus=2",
            f"--temp-dir={temp}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
        except urllib.error.HTTPError:
            break  # the server answers (401 without token): it is up
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the Ray head did not start")
            time.sleep(1)
        else:
            break
    yield url, env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-KILL", "-f", str(temp)], check=False)


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
    assert "task: Input should be 'score', 'classify' or 'rerank'" in proc.stdout + proc.stderr
    # the entrypoint's exit code (2: config error) reaches the submitter in the status message
    assert "failed with exit code 2" in proc.stdout + proc.stderr
