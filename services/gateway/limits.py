"""Per-stream rate limits: a token bucket on messages per second and one on bytes per second.

A worker's steady traffic is small (one metric batch per run per second, a heartbeat every
interval, statuses on change); after a reconnect it resends everything not acked at once, which
the bursts must let through. A stream that goes beyond a bucket is closed with the reason. The
buckets belong to one stream, so a worker that is closed and reconnects starts with full ones.
"""

from __future__ import annotations

import time


class TokenBucket:
    """Allows ``rate`` units per second on average and up to ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = time.monotonic()

    def take(self, amount: float) -> bool:
        """Takes ``amount`` if the bucket holds it; False (taking nothing) otherwise."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True


class StreamLimits:
    def __init__(self, messages_per_s: float, message_burst: int, bytes_per_s: float, byte_burst: int) -> None:
        self.messages = TokenBucket(messages_per_s, message_burst)
        self.bytes = TokenBucket(bytes_per_s, byte_burst)

    def exceeded(self, size: int) -> str | None:
        """Counts one message of ``size`` bytes; the reason if that goes beyond a limit."""
        if not self.messages.take(1):
            return f"more than {self.messages.rate:.0f} messages/s (burst {self.messages.burst:.0f})"
        if not self.bytes.take(size):
            return f"more than {self.bytes.rate:.0f} bytes/s (burst {self.bytes.burst:.0f})"
        return None
