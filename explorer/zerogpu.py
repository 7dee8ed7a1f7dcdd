"""ZeroGPU support: ``gpu(fn)`` is ``spaces.GPU(fn)`` on a ZeroGPU Space and ``fn`` elsewhere.

On ZeroGPU a GPU exists only inside a GPU-decorated call, so the session registered with
``place_on_gpu`` (its pipeline and SAEs) is moved to CUDA at the start of each such call.
"""

from __future__ import annotations

import functools
import inspect
import os

_ON_GPU: list = []
"""Objects with ``to_device(device)`` to move to CUDA inside every GPU-decorated call."""


def place_on_gpu(session) -> None:
    if session not in _ON_GPU:
        _ON_GPU.append(session)


def _move_to_cuda() -> None:
    for session in _ON_GPU:
        session.to_device("cuda")


def gpu(fn):
    if not os.environ.get("SPACES_ZERO_GPU"):
        return fn
    import spaces  # installed on Hugging Face Spaces only

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def on_gpu_stream(*args, **kwargs):
            _move_to_cuda()
            yield from fn(*args, **kwargs)

        return spaces.GPU(on_gpu_stream)

    @functools.wraps(fn)
    def on_gpu(*args, **kwargs):
        _move_to_cuda()
        return fn(*args, **kwargs)

    return spaces.GPU(on_gpu)
