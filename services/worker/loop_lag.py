"""How late the supervisor's event loop runs, per wall-clock second (callmeter/common/generator_load.py).

A timer asks to wake every TICK_S; how much later than asked it wakes is the loop's lag. The
worst lag of each second is kept for KEPT_S seconds, so that the sample of a second, forwarded
just after it ended, can carry it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict

TICK_S = 0.05
KEPT_S = 120


class LoopLag:
    def __init__(self) -> None:
        self.worst_ms: OrderedDict[int, int] = OrderedDict()  # Unix second → worst lag in it

    async def run(self) -> None:
        while True:
            asked = time.monotonic() + TICK_S
            await asyncio.sleep(TICK_S)
            late_ms = round(max(0.0, time.monotonic() - asked) * 1000)
            second = math.floor(time.time())
            self.worst_ms[second] = max(self.worst_ms.get(second, 0), late_ms)
            while len(self.worst_ms) > KEPT_S:
                self.worst_ms.popitem(last=False)

    def of_second(self, second: int) -> int:
        """The worst lag seen in that second, and in the one after it: a loop that was stuck at
        the boundary measures its lag only when it wakes, in the next second."""
        return max(self.worst_ms.get(second, 0), self.worst_ms.get(second + 1, 0))
