"""The worker's reconnect backoff: 5 s doubling to 60 s, ±20 % jitter."""

from __future__ import annotations

import itertools
import random

from services.worker.link import backoff_delays


def test_doubles_to_the_cap_with_jitter() -> None:
    delays = list(itertools.islice(backoff_delays(5, 60, random.Random(1)), 8))
    nominal = [5, 10, 20, 40, 60, 60, 60, 60]
    for delay, expected in zip(delays, nominal, strict=True):
        assert 0.8 * expected <= delay <= 1.2 * expected
    assert len({round(d, 6) for d in delays[4:]}) > 1  # jittered, not lock-step
