"""ZeroGPU support: ``gpu(fn)`` is ``spaces.GPU(fn)`` on a ZeroGPU Space and ``fn`` elsewhere."""

from __future__ import annotations

import os


def gpu(fn):
    if os.environ.get("SPACES_ZERO_GPU"):
        import spaces  # installed on Hugging Face Spaces only

        return spaces.GPU(fn)
    return fn
