"""The prompt behind a text context: the token ids the pipeline's text encoder was called with,
kept by a forward hook while a hooked generation runs, so that a block hook holding only
``encoder_hidden_states`` can read the prompt back (``PromptAdd`` rewrites it; ``Reroute`` checks
which concepts it names)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor

RECENT_CALLS = 8
"""Text-encoder calls kept for matching (a pipeline call makes two: the prompt and the negative)."""


class TextRecorder:
    """The token ids behind the text contexts the pipeline's encoder makes while it is hooked.

    A call counts only if encoding its ids again, with nothing else hooked, gives the same hidden
    states: a context made from modified input embeddings (a soft-prompt attack inserts its
    tokens that way) has ids that do not say what it holds, and is treated as having none."""

    def __init__(self):
        # (ids [n, L] on the CPU, hidden [n, L, D], the encoder, whether the ids give the hidden states)
        self.calls: list[list] = []
        self.paused = False

    def hook(self, module, args, kwargs, output):
        ids = args[0] if args else kwargs.get("input_ids")
        if self.paused or ids is None:
            return None
        hidden = output[0] if isinstance(output, (tuple, list)) else output.last_hidden_state
        self.calls.append([ids.detach().cpu(), hidden.detach(), module, None])
        del self.calls[:-RECENT_CALLS]
        return None

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """The project's own encodings (the counterfactual prompts, the checks) are not recorded."""
        self.paused = True
        try:
            yield
        finally:
            self.paused = False

    def _genuine(self, call: list) -> bool:
        """Whether the call's ids, encoded again, give its hidden states (checked once, when first
        matched: by then whatever modified the call's input is gone)."""
        if call[3] is None:
            ids, hidden, encoder, _ = call
            with self.pause(), torch.no_grad():
                again = encoder(ids.to(hidden.device))[0]
            call[3] = bool(_close(again, hidden))
        return call[3]

    def ids_of(self, context: Tensor) -> list[Tensor | None]:
        """Per row of ``context`` [B, L, D]: the token ids it was encoded from, or None (a context
        the encoder did not make while recorded, ``prompt_embeds``, or one made from modified input
        embeddings, a soft prompt)."""
        found: list[Tensor | None] = [None] * context.shape[0]
        for call in reversed(self.calls):
            ids, hidden = call[0], call[1]
            if hidden.shape[1:] != context.shape[1:]:
                continue
            made = hidden.to(device=context.device, dtype=context.dtype).float()
            gap = (context.detach().float()[:, None] - made[None]).abs().amax((-1, -2))  # [B, n]
            best, which = gap.min(1)
            tolerance = _tolerance(made)
            for b in range(len(found)):
                if found[b] is None and float(best[b]) <= tolerance and self._genuine(call):
                    found[b] = ids[int(which[b])]
        return found


def _tolerance(reference: Tensor) -> float:
    """How far a context may be from ``reference`` and still be it: a cast to half precision."""
    return 1e-3 * (float(reference.abs().amax()) + 1.0)


def _close(a: Tensor, b: Tensor) -> bool:
    a, b = a.float(), b.float().to(a.device)
    return a.shape == b.shape and float((a - b).abs().amax()) <= _tolerance(b)
