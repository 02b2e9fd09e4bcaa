"""The run's clock: its wall time from the start (inspection included) and each phase's seconds."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from crossenc.inputs.plan import JobPlan
from crossenc.storage import retried_requests


@dataclass
class Clock:
    """When the run started (monotonic and wall), the driver's store retries until then, and
    the seconds of each phase so far (``None``: known only later)."""

    started: float
    wall_started: float
    retried: int
    phases: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def start(cls, plan: JobPlan | None) -> Clock:
        """Start now; a plan inspected before the run counts its seconds in the run's time."""
        ahead = plan.inspect_seconds if plan is not None else 0.0
        return cls(time.monotonic() - ahead, time.time() - ahead, retried_requests())

    def seconds(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.started

    def lap(self, phase: str, since: float) -> float:
        """Record ``phase`` as the seconds from ``since`` (monotonic) to now; returns now."""
        now = time.monotonic()
        self.phases[phase] = round(now - since, 3)
        return now

    def retried_since_start(self) -> int:
        """Object-store requests the driver retried during the run."""
        return retried_requests() - self.retried
