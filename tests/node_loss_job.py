"""Run by test_faults.py in its own process: a 3-node Ray cluster on this machine
(ray.cluster_utils.Cluster, as Ray's own fault-tolerance tests do) loses the node holding the
scorer mid-run; a replacement node joins. Prints the run's counts as JSON."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from crossenc.job.run_job import run_job
from tests.helpers import job_config


def main(inp: str, out: str, model: str) -> None:
    # A lost node is noticed after health checks fail: every 0.5 s, 3 in a row (Ray's own
    # fault-tolerance tests shorten them so; the defaults take ~15 s).
    checks = {
        "health_check_initial_delay_ms": 0,
        "health_check_period_ms": 500,
        "health_check_timeout_ms": 500,
        "health_check_failure_threshold": 3,
    }
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": checks}
    )
    doomed = cluster.add_node(num_cpus=1, resources={"scorer": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    cfg = job_config(
        inp,
        out,
        model,
        input={"keep": ["pair_id"]},
        output={"files": {"max_rows": 40}},  # files close (and are journaled) as the run goes
        runtime={"block_rows": 20, "resources_per_replica": {"scorer": 1}},
    )
    events: list[str] = []
    results: list = []
    # The job runs in a thread: Ray's Cluster.add_node must be called from the main thread.
    job = threading.Thread(target=lambda: results.append(run_job(cfg)))
    job.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and job.is_alive():
        if list(Path(out).glob("_temporary/*/journal/*.parquet")):
            cluster.remove_node(doomed, allow_graceful=False)
            events.append("removed")
            cluster.add_node(num_cpus=1, resources={"scorer": 1})
            events.append("replaced")
            break
        time.sleep(0.05)
    job.join()
    result = results[0]
    print(
        json.dumps(
            {"events": events, "rows_read": result.rows_read, "rows_written": result.rows_written}
        )
    )
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
