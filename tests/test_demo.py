"""The README's first command: the demo job on the embedded default, offline model."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import read_output

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_script_runs_the_msmarco_preset(ray_local, minilm, tmp_path):
    # the offline model the script would build (it keeps one already there): the session's
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "model").symlink_to(minilm)
    env = {**os.environ, "MODEL": "offline", "ROWS": "400", "OUT": str(tmp_path / "demo")}
    # the job joins the suite's Ray, as on a cluster (a fresh machine's own Ray is started by
    # the ``crossenc score`` run of tests/job/test_progress.py)
    env["RAY_ADDRESS"] = ray_local.get_runtime_context().gcs_address
    proc = subprocess.run(
        ["scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in proc.stdout.splitlines()[1:])
    assert table["rows read"] == table["rows written"] == "400"
    assert float(table["rows/s overall"]) > 0
    out = read_output(tmp_path / "demo" / "scored")
    assert out.column_names == ["qid", "doc_id", "score", "rank", "truncated"]
    manifest = json.loads((tmp_path / "demo" / "scored" / "_manifest.json").read_text())
    summary = json.loads((tmp_path / "demo" / "scored" / "_summary.json").read_text())
    final = ("phases", "wall_seconds")  # known once the commit has finished: not in the manifest
    assert {k: v for k, v in summary.items() if k not in final} == {
        k: v for k, v in manifest["summary"].items() if k not in final
    }
    assert summary["rows"]["written"] == 400 and summary["phases"]["commit"] >= 0
    assert table["phases (s)"].startswith("inspect ")
    assert manifest["config"]["model"]["name"].endswith("demo/model")
    assert manifest["model"]["activation"] == "sigmoid"
