"""A deterministic place to kill a long run at: the hook the kill / resume tests drive.

With ``SAEURON_TEST_PAUSE_AFTER=<n>`` in its environment, a long loop that has just finished its
n-th unit (an SAE training step, a cached shard) says so in one line on stderr,
``saeuron: paused after <n> <unit> (pid <pid>)``, and blocks until it is killed. A test reads
that line from the pipe (a blocking read with a deadline) and kills exactly there, instead of
sleeping and polling files for a moment that may already be gone. Unset, which is always the
case outside those tests, it costs one environment lookup per unit.
"""

from __future__ import annotations

import os
import sys
import threading

from .errors import SaeuronError

PAUSE_ENV = "SAEURON_TEST_PAUSE_AFTER"


def pause_point(done: int, unit: str) -> None:
    """Block forever (until killed) once ``done`` units are finished, if the environment asks to."""
    wanted = os.environ.get(PAUSE_ENV)
    if wanted is None:
        return
    try:
        wanted = int(wanted)
    except ValueError:
        raise SaeuronError(f"{PAUSE_ENV} must be a whole number of {unit}, got {os.environ[PAUSE_ENV]!r}") from None
    if done != wanted:
        return
    print(f"saeuron: paused after {done} {unit} (pid {os.getpid()})", file=sys.stderr, flush=True)
    threading.Event().wait()
