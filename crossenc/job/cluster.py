"""Ray for the run: join the cluster RAY_ADDRESS names, or start an in-process Ray sized to this
machine."""

from __future__ import annotations

import logging
import os

import ray

from crossenc.config import JobConfig

log = logging.getLogger(__name__)


def machine_cores() -> int:
    """CPUs this process may run on (its affinity; the machine's count where none is set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def starts_own_ray() -> bool:
    """True when :func:`ensure_ray` would start an in-process Ray on this machine (no Ray
    running in this process, no RAY_ADDRESS naming a cluster)."""
    return not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")


IDLE_WORKER_MS = 300_000  # crossenc's own in-process Ray: how long an idle worker is kept


def ensure_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (or the Ray this process runs already), else start
    an in-process Ray on this machine's cores, without a dashboard."""
    if starts_own_ray():
        ray.init(
            num_cpus=machine_cores(),
            # Idle workers are kept for the run rather than killed after 1 s (Ray's default
            # once more workers exist than CPUs: the actors count), so a stage's next task
            # reuses a worker that has imported crossenc instead of starting one that must.
            _system_config={"idle_worker_killing_time_threshold_ms": IDLE_WORKER_MS},
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
    elif not ray.is_initialized():  # the cluster RAY_ADDRESS names
        ray.init(logging_level=logging.WARNING, log_to_driver=True)
    # crossenc shows its own progress (a live line on a terminal, else log lines); marking
    # Ray's notice about that as logged keeps it from printing a warning about it
    from ray.util.debug import log_once

    log_once("ray_data_progress_manager_disabled")
    ray.data.DataContext.get_current().enable_progress_bars = False


def for_this_machine(cfg: JobConfig) -> JobConfig:
    """The config as it runs here: on crossenc's own in-process Ray, unset runtime settings
    sized to the machine's cores (see :meth:`RuntimeConfig.on_machine`); else unchanged."""
    if not starts_own_ray():
        return cfg
    cores = machine_cores()
    runtime = cfg.runtime.on_machine(cores)
    if runtime is not cfg.runtime:
        log.info(
            "in-process Ray on %d cores: %d replica(s) x %d torch threads (set "
            "runtime.torch_threads or runtime.cpus_per_replica to choose)",
            cores,
            runtime.replicas,
            runtime.torch_threads,
        )
    return cfg.model_copy(update={"runtime": runtime})
