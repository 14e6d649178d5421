"""The restart backoff of `up`'s children (callmeter/cli/platform.py Backoff)."""

from __future__ import annotations

from callmeter.cli.platform import Backoff


def test_delays_double_to_the_cap_and_quick_failures_give_up() -> None:
    backoff = Backoff(first_s=1, max_s=4, give_up_after=5)
    assert [backoff.next_delay(0.5) for _ in range(4)] == [1, 2, 4, 4]
    assert backoff.next_delay(0.5) is None


def test_a_child_up_for_a_minute_starts_again_from_the_first_delay() -> None:
    backoff = Backoff()
    assert [backoff.next_delay(1) for _ in range(3)] == [1, 2, 4]
    assert backoff.next_delay(61) == 1
    assert backoff.next_delay(1) == 2
