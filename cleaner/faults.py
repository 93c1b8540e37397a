"""Fault injection for resume tests: ``NCLEAN_KILL_AT=<stage>:<n>`` makes the
process SIGKILL itself right after the n-th unit of that stage is durably
written (stages: ``embed`` = cache partitions, ``part`` = sidecar parts).

A real SIGKILL at a chosen point makes "killed, then rerun" tests exact
instead of racing a timer. Unset (always, in normal use) it costs one dict
lookup per shard.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def checkpoint(stage: str) -> None:
    spec = os.environ.get("NCLEAN_KILL_AT")
    if not spec:
        return
    want_stage, _, n = spec.partition(":")
    if want_stage != stage:
        return
    _counts[stage] = _counts.get(stage, 0) + 1
    if _counts[stage] >= int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
