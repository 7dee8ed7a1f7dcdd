"""Follow one Generate request of the explorer through the project's code and count the way.

Builds the app on the bundled model, takes the Generate panel's own handler (the function the
Generate button runs, decorators included) and runs one request through it under
``sys.setprofile`` / ``threading.setprofile``, counting the call and return events of functions
defined in ``explorer/`` and ``saeuron_core/``:

- **path**: project frames reached from the handler without passing through a third-party
  library (torch, diffusers, gradio, PIL, numpy...; the standard library, e.g. ``contextlib`` and
  ``threading``, and torch's ``inference_mode`` decorator are transparent). Project code that a
  library calls back (U-Net hooks once per block call, diffusers' step callback) is counted
  apart, as **callbacks**: it runs per step, not per request.
- **calls**: call events of path frames (a generator resumed counts again: it is entered again).
- **stays**: times control arrives in a project file other than the one it was in (the first
  arrival included), following the innermost path frame of each thread.
- **returns**: the stays that happen because a function returned into its caller's file.

Two parts of those totals are also shown on their own: **stream** stays (a generator handing a
streamed update up with ``yield``, and being resumed for the next one: once per preview) and
**leaf** visits (a call into another file that calls no further project file, directly or
through the model's callbacks, before returning: a one-line check or format helper; one stay
down, one return). What is left, the **chain**, is how often the request itself goes down a
layer and comes back. Generators behind ``@contextmanager`` are not streams: their ``yield``
enters the ``with`` block.

Usage: ``OMP_NUM_THREADS=1 python scripts/request_path.py [--steps N] [--detail]``.
"""

from __future__ import annotations

import argparse
import dis
import json
import os
import sys
import sysconfig
import threading
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tuple(str(ROOT / d) + os.sep for d in ("explorer", "saeuron_core"))
YIELD_VALUE = dis.opmap["YIELD_VALUE"]
STDLIB = tuple({sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]})
sys.path.insert(0, str(ROOT))


# Decorator plumbing that only wraps a project function (``@torch.inference_mode()``): transparent.
WRAPPERS = (os.path.join("torch", "utils", "_contextlib.py"),)


def kind_of(filename: str) -> str:
    """ "project", "stdlib" (transparent) or "library" (opaque: what it calls is a callback)."""
    if filename.startswith(PROJECT):
        return "project"
    in_stdlib = filename.startswith(STDLIB) and "site-packages" not in filename
    if filename.startswith("<") or filename.endswith(WRAPPERS) or in_stdlib:
        return "stdlib"
    return "library"


class PathCounter:
    """Profile function: per thread, a stack of frames (kind, on the path, file, entered from
    another file, called another file) and the innermost project file."""

    def __init__(self):
        self.local = threading.local()
        self.lock = threading.Lock()
        self.suspended: set = set()
        self.calls = self.stays = self.returns = self.callbacks = 0
        self.files: Counter = Counter()
        self.functions: Counter = Counter()
        self.trail: list[list[str]] = []
        """[arrow and file, part of the path: "chain", "stream" or "leaf"] per stay."""

    def _state(self):
        state = self.local.__dict__
        if "stack" not in state:
            state.update(stack=[], opaque=0, location=None)
        return state

    def __call__(self, frame, event, _arg):
        if event not in ("call", "return"):
            return  # c_call / c_return: built-ins
        state = self._state()
        filename = frame.f_code.co_filename
        kind = kind_of(filename)
        with self.lock:
            if event == "call":
                self._call(state, frame, kind, filename)
            elif state["stack"]:  # else: a frame entered before profiling started
                self._return(state, frame)

    def _call(self, state, frame, kind, filename) -> None:
        on_path = kind == "project" and state["opaque"] == 0
        resumed = frame in self.suspended
        self.suspended.discard(frame)
        parent = next((entry for entry in reversed(state["stack"]) if entry["on_path"]), None)
        crossed = on_path and (parent is None or parent["file"] != filename)
        if crossed and parent is not None:
            parent["called_out"] = True
        entry = {"kind": kind, "on_path": on_path, "file": filename, "crossed": crossed, "called_out": False}
        state["stack"].append(entry)
        if kind == "library":
            state["opaque"] += 1
        if kind == "project" and not on_path:
            self.callbacks += 1
            if parent is not None:
                parent["called_out"] = True  # e.g. pipeline.generate: the model calls the hooks back
        elif on_path:
            self.calls += 1
            self.functions[f"{Path(filename).relative_to(ROOT)}:{frame.f_code.co_name}"] += 1
            stays = self.stays
            self._arrive(state, filename, returning=False, streamed=resumed)
            state["stack"][-1]["trail_at"] = len(self.trail) - 1 if self.stays > stays else None

    def _return(self, state, frame) -> None:
        entry = state["stack"].pop()
        if entry["kind"] == "library":
            state["opaque"] -= 1
        if not entry["on_path"]:
            return
        # a generator handing an update to its consumer (not a @contextmanager entering its block)
        yielded = frame.f_code.co_code[frame.f_lasti] == YIELD_VALUE and not _in_contextlib(frame.f_back)
        leaf = not yielded and entry["crossed"] and not entry["called_out"] and entry["trail_at"] is not None
        if yielded:
            self.suspended.add(frame)
        elif leaf and entry["trail_at"] is not None:
            self.trail[entry["trail_at"]][1] = "leaf"
        below = next((e for e in reversed(state["stack"]) if e["on_path"]), None)
        if below is None:
            state["location"] = None
            return
        if entry["called_out"] and below["file"] == entry["file"]:
            below["called_out"] = True  # the file's entry frame called out through a helper of its own file
        self._arrive(state, below["file"], returning=True, streamed=yielded, leaf=leaf)

    def _arrive(self, state, filename: str, returning: bool, streamed: bool, leaf: bool = False) -> None:
        if state["location"] == filename:
            return
        state["location"] = filename
        name = str(Path(filename).relative_to(ROOT))
        self.stays += 1
        self.returns += returning
        self.files[name] += 1
        part = "stream" if streamed else "leaf" if leaf else "chain"
        self.trail.append([("<- " if returning else "-> ") + name, part])


def _in_contextlib(frame) -> bool:
    return frame is not None and frame.f_code.co_filename.endswith(os.sep + "contextlib.py")


def generate_handler(demo):
    for block_fn in demo.fns.values():
        if block_fn.api_name == "generate":
            return block_fn.fn
    raise SystemExit("the app has no event with api_name 'generate'")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--detail", action="store_true", help="also print the trail of files and the functions called")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from explorer.app import build_app
    from explorer.recipes import intervention_to_dict
    from explorer.session import ExplorerSession
    from saeuron_core.interventions import ScaleFeatures

    session = ExplorerSession.open(threads=1)
    demo = build_app(session, precompute_maps=False)
    handler = generate_handler(demo)
    point = session.points[-1]
    interventions = json.dumps([intervention_to_dict(ScaleFeatures((3,), 0.0, None, point))])
    steps = args.steps or session.info.default_steps
    request_args = ("An image of star in dots style.", 7, steps, session.info.default_guidance, interventions)

    counter = PathCounter()
    threading.setprofile(counter)
    sys.setprofile(counter)
    try:
        updates = list(handler(*request_args, request=None))
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    print(f"one Generate request ({steps} steps, one intervention at {point}): {len(updates)} updates streamed")
    print(f"files visited: {len(counter.files)}")
    parts = Counter(part for _, part in counter.trail)
    returns = Counter(part for arrow, part in counter.trail if arrow.startswith("<-"))
    print(f"stays: {counter.stays}  (stream {parts['stream']}, leaf visits {parts['leaf']}, chain {parts['chain']})")
    print(
        f"returns: {counter.returns}  (stream {returns['stream']}, leaf visits {returns['leaf']}, "
        f"chain {returns['chain']})"
    )
    print(f"calls: {counter.calls}")
    print(f"callbacks from torch/diffusers (hooks, step callback; per step, not on the path): {counter.callbacks}")
    print("stays per file: " + ", ".join(f"{f} {n}" for f, n in counter.files.most_common()))
    if args.detail:
        chain = [t for t, part in counter.trail if part == "chain"]
        print("\nchain (the stays that are neither leaf visits nor stream updates):\n  " + "\n  ".join(chain))
        print("\ntrail (every stay):\n  " + "\n  ".join(f"{t}  ({part})" for t, part in counter.trail))
        functions = [f"{n:3d} {f}" for f, n in counter.functions.most_common()]
        print("\nfunctions called on the path:\n  " + "\n  ".join(functions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
