"""How much CPU other processes used while a stage was evaluated: the evidence behind `measured_under_load`.

The load average is a poor witness here: it decays over a minute, so a `pip install` that ended just before a run
makes an idle machine look busy, and on a machine whose every core the run uses any housekeeping crosses the line.
What decides whether timings are trustworthy is whether others took CPU time *while we timed*: the machine's busy
CPU time over the window minus this process's own (Linux `/proc/stat`, where it exists).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

# Half a core: a shell, the OS and a progress bar stay below it; one thread of a competing job does not.
SLACK_CORES = 0.5


@dataclass(frozen=True)
class CpuSample:
    wall_s: float
    machine_busy_s: float | None  # every CPU's non-idle time; None where the OS does not tell
    own_busy_s: float  # this process's CPU time, its waited-for children included


def machine_busy_seconds() -> float | None:
    """Busy CPU-seconds of the whole machine since boot (`/proc/stat`; steal counts: a neighbour VM competes too)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    # user and nice already count guest and guest_nice (ticks[8:]): the first eight columns are all the time
    total = sum(ticks[:8])
    return (total - idle) / os.sysconf("SC_CLK_TCK")


def own_busy_seconds() -> float:
    """This process's CPU time, its waited-for children included."""
    own = os.times()
    return own.user + own.system + own.children_user + own.children_system


def sample() -> CpuSample:
    return CpuSample(wall_s=time.monotonic(), machine_busy_s=machine_busy_seconds(), own_busy_s=own_busy_seconds())


def cores_used_by_others(before: CpuSample, after: CpuSample) -> float | None:
    """The average number of cores other processes kept busy between two samples; None where unknown."""
    wall = after.wall_s - before.wall_s
    if before.machine_busy_s is None or after.machine_busy_s is None or wall <= 0:
        return None
    others = (after.machine_busy_s - before.machine_busy_s) - (after.own_busy_s - before.own_busy_s)
    return round(max(others / wall, 0.0), 3)


def others_compete(others_cores: float, cpu_count: int, threads: int) -> bool:
    """Whether others used more than the cores this process's `threads` left free (with `SLACK_CORES`)."""
    return others_cores > max(cpu_count - threads, 0) + SLACK_CORES
