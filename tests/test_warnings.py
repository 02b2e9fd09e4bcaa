"""No deprecated call: crossenc's Ray Data stages are built from Ray's current API, and the
suite's warning filters (pyproject.toml, tests/conftest.py) fail a deprecated call made from
crossenc or a test, whether Ray warns of it or logs it."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from crossenc.inputs.plan import plan_job
from crossenc.inputs.read import read_units
from crossenc.job.dataflow import build_dataset
from crossenc.output.parts import new_run_id
from crossenc.output.writer import WriterOptions
from tests.helpers import job_config, read_output

# WARNING, Warning, WARN, deprecated; Ray's C++ log lines of level W, E or F ("[time E pid tid]")
WARNING_LINE = re.compile(r"warn|deprecat|^\[[^\]]* [WEF] \d+ \d+\]", re.IGNORECASE)
# One drawing of crossenc's live progress line (tqdm's): "crossenc:  40%|####    | 120/300 [...]"
PROGRESS_BAR = re.compile(r"crossenc: +\d+%\|[^|\r\n]*\|[^\[\r\n]*\[[^\]\r\n]*\]")
# The lines of a normal run's log that match WARNING_LINE and are expected, each with its why:
CROSSENC_WARNINGS: dict[str, str] = {}  # crossenc's own, deliberate: a normal run logs none
RAY_LINES: dict[str, str] = {
    # Ray Core prints this (once, at ERROR) for every Ray Data actor pool with restarts: Ray
    # Data ray.puts each operator's MapTransformer (ScorerReplica and its constructor
    # arguments, ~10 KB) and DataContext (~6 KB) and hands the actors the ObjectRefs, whatever
    # their size; crossenc has no say in it. Their primary copies sit in the driver's node's
    # object store, referenced by the running operator until the dataset ends: they are lost
    # only with the driver (which output.mode resume covers, test_driver_killed_then_resumed),
    # and a scorer restarted after any other node's loss is rebuilt from them
    # (test_worker_node_lost_mid_run). Dropping the operator's references mid-run does make
    # the restart fail (ReferenceCountingAssertionError): Ray Data 2.60 never does.
    "has constructor arguments in the object store and max_restarts > 0": "ray#53727",
}


def _double(batch: dict) -> dict:
    return batch


@pytest.mark.parametrize("task", ["score", "rerank"])
def test_the_jobs_pipeline_is_built_without_a_deprecated_call(
    ray_local, models, pairs_dir: Path, tmp_path: Path, task: str
):
    # Every map_batches of the job (read+tokenize, the scorer pool, the rerank shuffle, the
    # write tasks) is built here; a deprecated argument fails this test at the call, through
    # pyproject.toml's filters: putting map_batches(concurrency=...) back into build_dataset
    # fails it with "DeprecationWarning: The argument ``concurrency`` is deprecated".
    cfg = job_config(pairs_dir, tmp_path / "out", models[("bert", 1)], task=task)
    plan = plan_job(cfg)
    ds = build_dataset(
        cfg,
        read_units(plan.files),
        plan.info,
        new_run_id(),
        [object()],
        WriterOptions(),
        group_shuffle=task == "rerank",
    )
    names, ops = [], [ds._logical_plan.dag]  # (the stages are lazy: built, not run)
    while ops:
        names.append(ops[-1].name)
        ops += ops.pop().input_dependencies
    assert {"MapBatches(ScorerReplica)", "MapBatches(write_block)"} <= set(names)


def test_a_deprecation_ray_logs_fails_the_call_that_made_it(ray_local):
    ds = ray_local.data.from_items([{"x": 1}])
    with pytest.raises(DeprecationWarning, match="concurrency"):
        ds.map_batches(_double, concurrency=1)  # Ray logs this one, warns of nothing


def test_a_deprecation_ray_warns_of_fails_the_call_that_made_it(ray_local):
    ds = ray_local.data.from_items([{"x": 1}])
    with pytest.raises(DeprecationWarning, match="ray_remote_args"):
        ds.map_batches(_double, max_retries=1)  # a remote argument without a name of its own


def test_the_filters_fail_a_deprecation_attributed_to_crossenc_or_a_test_only():
    for module in ("crossenc.job.run_job", "bench.oob", "test_api", "tests.helpers"):
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            with pytest.raises(category):
                warnings.warn_explicit("old", category, "f.py", 1, module=module)
    # a library's own, attributed to its module (as Ray's DataContext warns whenever one is
    # made): not raised
    with warnings.catch_warnings(record=True):
        for module in ("ray.data.context", "transformers.modeling_utils"):
            warnings.warn_explicit("old", DeprecationWarning, "f.py", 1, module=module)


@pytest.mark.slow
def test_a_normal_run_logs_nothing_to_act_on_but_the_listed_lines(score_on_a_terminal):
    # The run is tests/conftest.py's score_on_a_terminal (shared with tests/job/test_progress.py):
    # the installed command on a fresh machine's footing, its own Ray, stderr on a terminal.
    run = score_on_a_terminal
    assert run.returncode == 0, run.terminal[-3000:]
    assert read_output(run.output).num_rows == 300  # pairs_dir's rows
    assert "in-process Ray on" in run.terminal  # the log is the run's, and it is read here
    # A line written while the live bar is drawn follows the bar on its screen line: each
    # drawing of the bar ends a line here, so such a line is checked from its start (^\[).
    assert PROGRESS_BAR.search(run.terminal)  # the bar was drawn, and is what this cuts out
    lines = PROGRESS_BAR.sub("\n", run.terminal).splitlines()
    assert not [line for line in lines if "%|" in line]  # every drawing of it
    expected = [*CROSSENC_WARNINGS, *RAY_LINES]
    unexpected = [
        line
        for line in lines
        if WARNING_LINE.search(line) and not any(text in line for text in expected)
    ]
    assert unexpected == []
