"""What every training loop here shares: a progress bar that checkpoints, atomic state files,
stopping cleanly on SIGTERM, and "stage finished" markers for multi-stage builds.

Used by the SAE trainer (``sae_train``), the MiniCanvas model build and ESD.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .io import atomic_path, write_json
from .pause import pause_point

DONE_FILE = "done.json"


def save_state(path: str | Path, state: dict) -> None:
    """Write a training state (tensors, numbers, lists, dicts) atomically: the old one or the new one, never half."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path) -> dict | None:
    """The state saved at ``path``, or None when there is none yet."""
    path = Path(path)
    if not path.is_file():
        return None
    # weights_only: a checkpoint is data, never code to unpickle.
    return torch.load(path, map_location="cpu", weights_only=True)


def stage_done(work: str | Path, stage: str) -> dict | None:
    """The record of a finished stage (``<work>/<stage>/done.json``), or None if it has not finished."""
    f = Path(work) / stage / DONE_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def mark_stage_done(work: str | Path, stage: str, info: dict) -> dict:
    """Record ``stage`` as finished with ``info``; returns ``info``."""
    write_json(Path(work) / stage / DONE_FILE, info)
    return info


class Progress:
    """A progress bar that also runs ``save`` every ``minutes`` of wall time and/or every
    ``every_steps`` steps (checkpoints)."""

    def __init__(
        self,
        desc: str,
        total: int,
        initial: int,
        save: Callable[[], None],
        minutes: float | None = None,
        every_steps: int | None = None,
        postfix_every: int = 50,
    ):
        self.bar = tqdm(total=total, initial=initial, desc=desc, mininterval=5)
        self.save, self.minutes, self.every_steps, self.postfix_every = save, minutes, every_steps, postfix_every
        self.last_save = time.time()

    def tick(self, step: int, **postfix) -> bool:
        """Count one step (``step`` is the count after it); True when it saved a checkpoint."""
        self.bar.update(1)
        if postfix and step % self.postfix_every == 0:
            self.bar.set_postfix(**postfix)
        due_by_time = self.minutes is not None and time.time() - self.last_save > self.minutes * 60
        due_by_step = self.every_steps is not None and step % self.every_steps == 0
        saved = due_by_time or due_by_step
        if saved:
            self.save()
            self.last_save = time.time()
        pause_point(step, "steps")  # kill / resume tests stop here (saeuron_core.pause)
        return saved

    def close(self) -> None:
        self.bar.close()


class StopRequest:
    """While active, SIGTERM sets ``requested`` instead of killing the process, so a training loop
    can checkpoint and stop at a step boundary.

    Signal handlers can only be installed from the main thread; elsewhere (a worker thread of the
    explorer) this is inert and ``requested`` stays False.
    """

    requested: bool = False

    def __enter__(self) -> "StopRequest":
        self.requested = False
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._installed:
            # None: the previous handler was not set from Python; the default is the best guess.
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
