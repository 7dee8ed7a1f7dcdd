"""Counterfactual adding (``PromptAdd``): cross-attention reads the prompt with the concepts
written in. The specification is its docstring in ``intervention_specs``; how it is applied:

1. The prompt behind each conditional row: a forward hook on the pipeline's text encoder keeps
   the token ids and hidden states of its recent calls; a row's text context is matched to the
   call row it came from (equal up to the cast to the U-Net's dtype), and its ids are decoded.
2. The counterfactual text: ``prompts.written_in`` writes each concept into that prompt, and the
   text encoder encodes it (once per generation).
3. Each block runs a second time on the same input with the counterfactual context, as
   ``Reroute``'s blocks do (``reroute.rerun_block``); its output on the conditional rows becomes
   out + strength * (out' - out).

The hooks live in one ``HookSet`` and are removed in ``finally``; the step index comes from the
same ``StepClock`` as every other hook (``hooks``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor

from .errors import SaeuronError
from .hooks import HookSet, StepClock, _block_tensor, _replace_block_tensor, _start_clock, resolve_point
from .intervention_specs import PromptAdd
from .pipeline import text_embeddings
from .prompt_text import TextRecorder
from .prompts import written_in
from .reroute import cond_rows, cross_attention_blocks, rerun_block


class PromptAddEdit:
    """A ``PromptAdd`` compiled against the pipeline's tokenizer and text encoder. ``texts``:
    per conditional row of the latest generation, (prompt, prompt with the concepts written in),
    or None where the row's context had no token ids."""

    def __init__(self, add: PromptAdd, pipe, kinds: Mapping[str, str], vocabulary: Mapping):
        self.source, self.pipe = add, pipe
        self.kinds, self.vocabulary = kinds, vocabulary
        self.texts: list[tuple[str, str] | None] = []

    def written(self, prompt: str) -> str:
        for concept in self.source.concepts:
            prompt = written_in(prompt, self.kinds[concept], concept, self.vocabulary)
        return prompt

    def counterfactual(self, context: Tensor, recorder: TextRecorder) -> tuple[Tensor, Tensor]:
        """(``context`` re-encoded from each row's prompt with the concepts written in, per row
        whether it changed)."""
        tokenizer = self.pipe.tokenizer
        texts: list[tuple[str, str] | None] = []
        for ids in recorder.ids_of(context):
            if ids is None:
                texts.append(None)
                continue
            prompt = tokenizer.decode(ids, skip_special_tokens=True)
            texts.append((prompt, self.written(prompt)))
        self.texts = texts
        changed = [b for b, t in enumerate(texts) if t is not None and t[0] != t[1]]
        counterfactual = context.clone()
        edited = torch.zeros(context.shape[0], dtype=torch.bool, device=context.device)
        if changed:
            with recorder.pause():
                hidden = text_embeddings(self.pipe, [texts[b][1] for b in changed])[1]
            counterfactual[changed] = hidden.to(device=context.device, dtype=context.dtype)
            edited[changed] = True
        return counterfactual, edited


class _Generation:
    """Per edit: the counterfactual context of the current generation, made on its first block
    call and kept until the step index goes back or the context changes."""

    def __init__(self):
        self.key: tuple | None = None
        self.index = -1
        self.value: tuple[Tensor, Tensor] | None = None

    def get(self, index: int, context: Tensor, make) -> tuple[Tensor, Tensor]:
        key = (context.data_ptr(), tuple(context.shape))
        if self.value is None or key != self.key or index < self.index:
            self.value, self.key = make(), key
        self.index = index
        return self.value


@contextlib.contextmanager
def prompt_added(
    pipe,
    adds: Sequence[PromptAdd],
    kinds: Mapping[str, str],
    vocabulary: Mapping,
    cfg: bool = True,
    scheduler=None,
    name: str = "prompt_add",
) -> Iterator[list[PromptAddEdit]]:
    """Apply ``adds`` while ``pipe`` generates. ``kinds``: each concept's kind."""
    if getattr(pipe, "tokenizer", None) is None or getattr(pipe, "text_encoder", None) is None:
        raise SaeuronError("PromptAdd needs a pipeline with a tokenizer and text encoder, not a bare U-Net")
    for add in adds:
        for concept in add.concepts:
            if concept not in kinds:
                raise SaeuronError(f"PromptAdd: unknown concept {concept!r}")
    unet = pipe.unet
    edits = [PromptAddEdit(add, pipe, kinds, vocabulary) for add in adds]
    generations = [_Generation() for _ in edits]
    recorder = TextRecorder()
    clock = StepClock()
    with HookSet(unet) as hooks, contextlib.ExitStack() as stack:
        hooks.forward_hook(f"{name}:text", pipe.text_encoder, recorder.hook, with_kwargs=True)
        blocks: dict[str, list[int]] = {}
        for i, edit in enumerate(edits):
            for block in edit.source.blocks or cross_attention_blocks(unet, mid=True):
                blocks.setdefault(block, []).append(i)
        for block, users in blocks.items():
            hooks.forward_hook(
                f"{name}:{block}",
                resolve_point(unet, block),
                _block_hook([edits[i] for i in users], [generations[i] for i in users], recorder, clock, cfg),
                with_kwargs=True,
            )
        _start_clock(hooks, name, clock, stack, scheduler)
        yield edits


def _block_hook(
    edits: list[PromptAddEdit], generations: list[_Generation], recorder: TextRecorder, clock: StepClock, cfg: bool
):
    def add(module, args, kwargs, output):
        step = clock.now()
        out = _block_tensor(output)
        rows = cond_rows(out.shape[0], cfg)
        context = kwargs.get("encoder_hidden_states")
        if context is None:
            raise SaeuronError("a PromptAdd block was called without encoder_hidden_states: is it cross-attention?")
        context = context[rows]
        x = out[rows]
        edited_any = False
        for edit, generation in zip(edits, generations):
            window = edit.source.steps
            counterfactual, edited = generation.get(
                step.index, context, lambda edit=edit: edit.counterfactual(context, recorder)
            )
            if (window is not None and not window.contains(step.index)) or not bool(edited.any()):
                continue
            alternative = rerun_block(module, args, kwargs, rows, counterfactual)
            weight = (edit.source.strength * edited.to(x.dtype))[:, None, None, None]
            x = x + weight * (alternative - x)
            edited_any = True
        if not edited_any:
            return None
        result = out.clone()
        result[rows] = x
        return _replace_block_tensor(output, result)

    return add
