"""In-process counters and histograms, exported as Prometheus text by the API."""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value
        self.n += 1


class Metrics:
    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.jobs: dict[str, Histogram] = defaultdict(Histogram)
        self.steps: dict[tuple[str, str], Histogram] = defaultdict(Histogram)
        self.tracker_lag = 0.0
        self.tracker_polls = 0
        self.schedule_fires = 0

    def job_duration(self, pipeline: str, seconds: float) -> None:
        with self._mutex:
            self.jobs[pipeline].observe(seconds)

    def step_duration(self, pipeline: str, step: str, seconds: float) -> None:
        with self._mutex:
            self.steps[(pipeline, step)].observe(seconds)
