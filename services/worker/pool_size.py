"""How many engine processes this machine can run, when CALLMETER_MAX_ENGINES does not say.

From the measured cost of an engine (docs/engine.md, `python -m bench engine`): with its 4 legs
up an engine takes 0.9–1.5 % of a core and ~32 MB of RSS (~20 MB proportional). The pool is
sized so that engines use at most 60 % of the CPUs this process may run on (the rest is the
supervisor's, the kernel's UDP work and headroom against scheduling jitter, which media timing
feels before a core is full) and at most half the memory available, whichever is fewer. Both
read the container's limits (cgroup v2 cpu.max, memory.max) where there are some.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

#: CPU of one engine with its 4 calls up, in percent of a core: the top of the measured range.
ENGINE_CPU_PCT = 1.5
#: Share of each usable core the engines may take, in percent.
CORES_FOR_ENGINES_PCT = 60.0
#: Resident memory of one engine with its calls up.
ENGINE_RSS_BYTES = 32 * 2**20
#: Share of the available memory the engines may take.
MEMORY_FOR_ENGINES = 0.5

CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Machine:
    cores: float
    memory_bytes: int


@dataclass(frozen=True)
class Limit:
    engines: int
    why: str


def this_machine(cgroup: Path = CGROUP) -> Machine:
    """The CPUs this process may use and the memory available to it, container limits included."""
    cores: float = len(os.sched_getaffinity(0))
    quota = _read(cgroup / "cpu.max").split()
    if len(quota) == 2 and quota[0] != "max":
        cores = min(cores, int(quota[0]) / int(quota[1]))
    memory = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for line in _read(Path("/proc/meminfo")).splitlines():
        if line.startswith("MemAvailable:"):  # what can be had without swapping, caches included
            memory = int(line.split()[1]) * 1024
    limit, used = _read(cgroup / "memory.max"), _read(cgroup / "memory.current")
    if limit.isdigit():
        memory = min(memory, int(limit) - int(used or 0))
    return Machine(cores=cores, memory_bytes=max(0, memory))


def machine_limits(machine: Machine) -> list[Limit]:
    """The engines the machine's CPUs and memory allow, each with why."""
    by_cpu = max(1, math.floor(machine.cores * CORES_FOR_ENGINES_PCT / ENGINE_CPU_PCT))
    by_memory = max(1, math.floor(machine.memory_bytes * MEMORY_FOR_ENGINES / ENGINE_RSS_BYTES))
    return [
        Limit(by_cpu, f"{machine.cores:g} cores × {CORES_FOR_ENGINES_PCT:g} % at {ENGINE_CPU_PCT:g} % of a core an engine"),
        Limit(by_memory, f"{machine.memory_bytes / 2**30:.1f} GiB available × {MEMORY_FOR_ENGINES:g} at "
                         f"{ENGINE_RSS_BYTES // 2**20} MB an engine"),
    ]


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
