"""The reference form of the unlearning edit, for the hook-overhead benchmark's ``dense`` arm.

The reference implementation (the SAeUron paper's code) decodes the whole dense code twice
(original and edited) and adds the error term; ``DenseUnlearn`` does exactly that with the same
compiled selection, threshold and multiplier as ``saeuron_core.interventions.UnlearnEdit``, so
only the decode differs from ours.
"""

from __future__ import annotations

import contextlib

import torch

from saeuron_core.hooks import Step, edit_block_output, from_tokens, to_tokens
from saeuron_core.interventions import Unlearn, UnlearnEdit
from saeuron_core.sae import TopKSae
from saeuron_core.scoring import ConceptStats


class DenseUnlearn:
    """The reference computation of one ``Unlearn`` at one hook point: dense codes, two full
    decodes, error term added. Selection / threshold / multiplier are compiled as in
    ``saeuron_core.interventions.UnlearnEdit``, so the edit is the same."""

    def __init__(self, sae: TopKSae, unlearn: Unlearn, stats: ConceptStats):
        self.sae, self.stats = sae, stats
        compiled = UnlearnEdit(unlearn, stats, sae.device)  # the same selection as the sparse hook
        self.rows, self.factors, self.thresholds = (
            compiled.latents_per_row,
            compiled.multipliers_per_row,
            compiled.thresholds_per_row,
        )
        self.calls = 0
        self.selected_total = 0
        self.edited_tokens_total = 0
        self.tokens_total = 0

    def __call__(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = to_tokens(x).reshape(-1, channels)
        top_acts, top_indices = self.sae.encode(tokens)
        z = self.sae.dense_codes(top_acts, top_indices)  # [N, n_latents]
        x_hat = z @ self.sae.W_dec + self.sae.b_dec
        row = self.stats.row_for_timestep(step.timestep)
        ids = self.rows[row]
        current = z[:, ids]
        fired = current > self.thresholds[row]
        z[:, ids] = torch.where(fired, current * self.factors[row], current)
        x_hat_edited = z @ self.sae.W_dec + self.sae.b_dec
        out = x_hat_edited + (tokens.to(x_hat.dtype) - x_hat)
        self.calls += 1
        self.selected_total += len(ids)
        self.edited_tokens_total += int(fired.any(1).sum())
        self.tokens_total += tokens.shape[0]
        return from_tokens(out.to(x.dtype).reshape(batch, height * width, channels), height, width)

    def summary(self) -> dict:
        calls = max(self.calls, 1)
        return {
            "hook_calls": self.calls,
            "selected_latents_per_call": round(self.selected_total / calls, 2),
            "edited_tokens_per_call": round(self.edited_tokens_total / calls, 2),
            "tokens_per_call": round(self.tokens_total / calls, 1),
        }


@contextlib.contextmanager
def dense_hooks(unet, saes: dict, interventions: list[Unlearn], stats_by_point: dict, editors: list):
    """``DenseUnlearn`` edit fns on the ``unet`` for every intervention (appended to ``editors``), removed on exit."""
    with contextlib.ExitStack() as stack:
        for iv in interventions:
            editor = DenseUnlearn(saes[iv.point], iv, stats_by_point[iv.point])
            editors.append(editor)
            stack.enter_context(edit_block_output(unet, iv.point, editor, name=f"bench-dense:{iv.point}"))
        yield
