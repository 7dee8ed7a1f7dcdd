"""The prompt behind a text context: the token ids the pipeline's text encoder was called with,
kept by a forward hook while a hooked generation runs, so that a block hook holding only
``encoder_hidden_states`` can read the prompt back (``PromptAdd`` rewrites it; ``Reroute`` checks
which concepts it names)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import Tensor

RECENT_CALLS = 8
"""Text-encoder calls kept for matching (a pipeline call makes two: the prompt and the negative)."""


class TextRecorder:
    """The token ids behind the text contexts the pipeline's encoder makes while it is hooked."""

    def __init__(self):
        self.calls: list[tuple[Tensor, Tensor]] = []  # (ids [n, L] on the CPU, hidden [n, L, D])
        self.paused = False

    def hook(self, _module, args, kwargs, output):
        ids = args[0] if args else kwargs.get("input_ids")
        if self.paused or ids is None:
            return None
        hidden = output[0] if isinstance(output, (tuple, list)) else output.last_hidden_state
        self.calls.append((ids.detach().cpu(), hidden.detach()))
        del self.calls[:-RECENT_CALLS]
        return None

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """The project's own encodings (the counterfactual prompts) are not recorded."""
        self.paused = True
        try:
            yield
        finally:
            self.paused = False

    def ids_of(self, context: Tensor) -> list[Tensor | None]:
        """Per row of ``context`` [B, L, D]: the token ids it was encoded from, or None (a context
        the encoder did not make while recorded: ``prompt_embeds``, a soft prompt)."""
        found: list[Tensor | None] = [None] * context.shape[0]
        for ids, hidden in reversed(self.calls):
            if hidden.shape[1:] != context.shape[1:]:
                continue
            made = hidden.to(device=context.device, dtype=context.dtype).float()
            gap = (context.float()[:, None] - made[None]).abs().amax((-1, -2))  # [B, n]
            best, which = gap.min(1)
            tolerance = 1e-3 * (float(made.abs().amax()) + 1.0)
            for b in range(len(found)):
                if found[b] is None and float(best[b]) <= tolerance:
                    found[b] = ids[int(which[b])]
        return found
