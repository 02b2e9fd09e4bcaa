"""Progress of a run: rows done, rows/s and the time left."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

log = logging.getLogger(__name__)


class Progress:
    """Rows done, rows/s and the time left: one live tqdm line when ``stream`` is a terminal,
    else a log line at most every ``every`` seconds."""

    def __init__(self, total: int, every: float = 10.0, stream: Any = None) -> None:
        self.total, self.every, self.done = total, every, 0
        self.started = self.last = time.monotonic()
        stream = stream if stream is not None else sys.stderr
        self.bar = None
        if stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                unit="rows",
                unit_scale=True,
                dynamic_ncols=True,
                smoothing=0.1,
                file=stream,
                desc="crossenc",
            )

    def add(self, rows: int) -> None:
        """Count rows finished; update the bar, or log a progress line when one is due."""
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
            return
        now = time.monotonic()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-9)
        left = (self.total - self.done) / rate if rate else float("inf")
        log.info(
            "progress: %d/%d rows (%.1f%%), %.1f rows/s, ETA %s",
            self.done,
            self.total,
            100 * self.done / max(self.total, 1),
            rate,
            time.strftime("%H:%M:%S", time.gmtime(left)) if left < 8.64e4 else ">1 day",
        )

    def close(self) -> None:
        """End the live line (the log lines need no ending)."""
        if self.bar is not None:
            self.bar.close()


POLL_SECONDS = 1.0  # how often the driver asks how many rows the replicas scored


@ray.remote(num_cpus=0)
class _Counter:
    """Rows the replicas scored since the driver last asked."""

    def __init__(self) -> None:
        self.rows = 0

    def add(self, rows: int) -> None:
        self.rows += rows

    def take(self) -> int:
        rows, self.rows = self.rows, 0
        return rows


class ScoredRows:
    """Rows counted as the replicas finish scoring them, for a run whose rows reach the driver
    only after a shuffle (a rerank across files): the replicas tell an actor, a driver thread
    asks it every ``every`` seconds and hands the rows to ``on_rows`` (the progress line)."""

    def __init__(self, on_rows: Callable[[int], None], every: float | None = None) -> None:
        self.actor = _Counter.remote()
        self.on_rows, self.every = on_rows, every if every is not None else POLL_SECONDS
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="scored-rows", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            self._take()

    def _take(self) -> None:
        try:
            rows = ray.get(self.actor.take.remote(), timeout=60)
        except Exception as err:  # noqa: BLE001 - progress must never fail the run
            log.debug("scored-rows counter not read: %s", err)
            return
        if rows:
            self.on_rows(rows)

    def close(self) -> None:
        """Stop asking, count what is left, and end the actor."""
        self._stop.set()
        self._thread.join()
        self._take()
        ray.kill(self.actor)
