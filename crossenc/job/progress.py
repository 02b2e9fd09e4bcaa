"""Progress of a run: rows done, rows/s and the time left."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

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
