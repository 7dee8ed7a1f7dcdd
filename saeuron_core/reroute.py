"""Counterfactual rerouting: the SAE sees a concept, the cross-attention blocks see it swapped.

How a ``Reroute`` is applied (the specification is its docstring in ``intervention_specs``):

1. Detection, at the flag SAE's hook point, every step: the share of map tokens on which any of
   the concept's selected latents (as ``Unlearn`` selects them) fires above its mean over all
   concepts. An image (a conditional batch row) counts as showing the concept from the step on
   which the running mean of that share over the steps so far reaches ``detect``.
2. Counterfactual text: the reference prompts of the concept and of its anchor (the same prompts
   with the concept's word replaced) give, per position from the word on, the mean change of the
   text encoder's hidden states (delta). In a row's context the word is found as the token most
   similar (cosine >= ``match``) to the concept word's mean hidden state; from there on, delta is
   added. A row showing the concept whose context has no such token (a paraphrase, a soft-prompt
   attack) gets the anchor's own prompt as context, and only on the tokens the SAE flags.
   Where the text encoder made the row's context while hooked (``prompt_text.TextRecorder``), the
   prompt is read back from its token ids; one that names another concept of the kind and not
   this one is left alone (``Reroute.heed_prompt``).
3. Each rerouted block runs a second time, on the same input, with the counterfactual context;
   its output becomes out + mask * (out_cf - out) on the conditional rows. Blocks that run before
   the flag point in a step use the previous step's detection.

The hooks live in one ``HookSet`` and are removed in ``finally``; the U-Net's timestep and the
step index come from the same ``StepClock`` as every other hook (``hooks``).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import SaeuronError
from .hooks import HookSet, StepClock, _block_tensor, _replace_block_tensor, _start_clock, resolve_point, to_tokens
from .intervention_specs import Reroute
from .pipeline import text_embeddings
from .prompt_text import TextRecorder
from .prompts import anchor_prompt, names_another, reference_prompts
from .sae import TopKSae
from .scoring import SCORES, ConceptStats, mean_activation_all, select


def cross_attention_blocks(unet, mid: bool = False) -> tuple[str, ...]:
    """The U-Net's cross-attention (``Transformer2DModel``) blocks outside the mid block (``mid``:
    and in it)."""
    return tuple(
        name
        for name, module in unet.named_modules()
        if type(module).__name__ == "Transformer2DModel" and (mid or not name.startswith("mid_block"))
    )


def nearest_concept(stats: ConceptStats, concept: str, exclude: Sequence[str]) -> str:
    """The concept whose mean code is nearest (cosine, averaged over steps) to ``concept``'s."""
    unit = F.normalize(stats.means.float(), dim=-1)
    similarity = (unit * unit[stats.index(concept)]).sum(-1).mean(-1)
    for name in exclude:
        similarity[stats.index(name)] = -2.0
    if bool((similarity <= -2.0).all()):
        raise SaeuronError(f"no concept is left to reroute {concept!r} to")
    return stats.concepts[int(similarity.argmax())]


class Swap:
    """One concept's counterfactual text: its word's mean hidden state and the mean change of the
    hidden states from the word on when it becomes the anchor's; the anchor's own prompt."""

    def __init__(self, pipe, kind: str, concept: str, anchor: str, vocabulary: Mapping, match: float):
        # the same prompts, only the concept's word replaced by the anchor's
        ids_c, hidden_c = text_embeddings(pipe, reference_prompts(kind, concept, vocabulary))
        ids_a, hidden_a = text_embeddings(pipe, reference_prompts(kind, anchor, vocabulary))
        length = ids_c.shape[1]
        words, deltas, counts = [], torch.zeros_like(hidden_c[0]), torch.zeros(length, 1)
        for i in range(len(ids_c)):
            differ = (ids_c[i] != ids_a[i]).nonzero()
            if not len(differ):
                raise SaeuronError(f"{concept!r} and its anchor {anchor!r} tokenize alike")
            p = int(differ[0])
            words.append(hidden_c[i, p])
            deltas[: length - p] += hidden_a[i, p:] - hidden_c[i, p:]
            counts[: length - p] += 1
        self.concept, self.anchor, self.match = concept, anchor, match
        self.word = torch.stack(words).mean(0)
        self.delta = deltas / counts.clamp(min=1)
        self.anchor_context = text_embeddings(pipe, [anchor_prompt(kind, anchor)])[1]

    def found(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Per row of ``context`` [B, L, D]: whether the concept's word is there, and where."""
        similarity = F.cosine_similarity(context.float(), self.word.to(context.device)[None, None], dim=-1)
        best, position = similarity.max(1)
        return best >= self.match, position

    def apply(self, context: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """``context`` with the word moved onto the anchor's in ``rows`` where it is found, and
        per row whether it was found."""
        found, position = self.found(context)
        out = context.clone()
        delta = self.delta.to(device=context.device, dtype=context.dtype)
        for b in (rows & found).nonzero().squeeze(1).tolist():
            p = int(position[b])
            out[b, p:] = context[b, p:] + delta[: context.shape[1] - p]
        return out, found


_SWAPS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _swap(pipe, kind: str, concept: str, anchor: str, vocabulary: Mapping, match: float) -> Swap:
    """``Swap(...)``, made once per text encoder and arguments: it encodes the concept's and the
    anchor's reference prompts (about 15 text-encoder passes), which every entry into a hooked
    generation (each explorer Generate) would otherwise repeat."""
    key = (
        id(pipe.tokenizer),
        kind,
        concept,
        anchor,
        match,
        tuple((k, tuple(v)) for k, v in sorted(vocabulary.items())),
    )
    made = _SWAPS.setdefault(pipe.text_encoder, {})
    if key not in made:
        made[key] = Swap(pipe, kind, concept, anchor, vocabulary, match)
    return made[key]


class ConceptFlags:
    """Where a ``Reroute``'s concepts show at its flag point: per concept, its selected latents
    per statistics row (``scoring.select``) and their firing thresholds (the mean over all
    concepts). The one flag rule, shared by the hooks and by whatever reports a detection."""

    def __init__(self, reroute: Reroute, sae: TopKSae, stats: ConceptStats):
        self.sae, self.stats = sae, stats
        thresholds = mean_activation_all(stats).float()
        self.per_concept: list[tuple[list[Tensor], list[Tensor]]] = []
        for concept, tau, _anchor in reroute.per_concept():
            ids = [row.to(sae.device) for row in select(SCORES[reroute.score](stats, concept), tau)]
            self.per_concept.append((ids, [thresholds[r, i.cpu()].to(sae.device) for r, i in enumerate(ids)]))

    def tokens(self, x: Tensor, timestep: float) -> Tensor:
        """[n_concepts, B, H, W] bool: tokens of the maps ``x`` [B, C, H, W] where a concept's
        selected latents fire above their mean."""
        batch, channels, height, width = x.shape
        row = self.stats.row_for_timestep(timestep)
        top_acts, top_indices = self.sae.encode(to_tokens(x).reshape(-1, channels))
        out = []
        for ids, thresholds in self.per_concept:
            hits = top_indices[:, :, None] == ids[row][None, None, :]
            z = (hits * top_acts[:, :, None]).sum(1)
            out.append((z > thresholds[row]).any(1).reshape(batch, height, width))
        return torch.stack(out)


class RerouteEdit:
    """A ``Reroute`` compiled against its flag SAE, statistics and the pipeline's text encoder."""

    def __init__(self, reroute: Reroute, sae: TopKSae, stats: ConceptStats, pipe, kind: str, vocabulary: Mapping):
        self.source = reroute
        self.tokenizer, self.kind, self.vocabulary = pipe.tokenizer, kind, vocabulary
        self.swaps: list[Swap] = []
        for concept, _tau, anchor in reroute.per_concept():
            stats.index(concept)  # an unknown concept fails here, by name
            if anchor == "nearest":
                anchor = nearest_concept(stats, concept, reroute.concepts)
            elif anchor in reroute.concepts:
                raise SaeuronError(f"{concept!r} cannot be rerouted to {anchor!r}: it is removed too")
            self.swaps.append(_swap(pipe, kind, concept, anchor, vocabulary, reroute.match))
        self.flags = ConceptFlags(reroute, sae, stats)

    def read(self, context: Tensor, recorder: TextRecorder) -> tuple[Tensor, Tensor]:
        """(``asked_elsewhere`` [n_concepts, B] bool: rows whose prompt, read back from its token
        ids, names another concept of the kind and not this one (only when heeded); ``untrusted``
        [B] bool: rows without genuine token ids, ``prompt_embeds`` or a soft prompt)."""
        asked = torch.zeros(len(self.swaps), context.shape[0], dtype=torch.bool, device=context.device)
        untrusted = torch.ones(context.shape[0], dtype=torch.bool, device=context.device)
        for b, ids in enumerate(recorder.ids_of(context)):
            if ids is None:
                continue
            untrusted[b] = False
            if self.source.heed_prompt:
                prompt = self.tokenizer.decode(ids, skip_special_tokens=True)
                for c, swap in enumerate(self.swaps):
                    asked[c, b] = names_another(prompt, self.kind, swap.concept, self.vocabulary)
        return asked, untrusted


@contextlib.contextmanager
def rerouted(
    pipe,
    reroutes: Sequence[Reroute],
    saes: Mapping[str, TopKSae],
    stats: Mapping[str, ConceptStats],
    kinds: Mapping[str, str],
    vocabulary: Mapping,
    cfg: bool = True,
    scheduler=None,
    name: str = "reroute",
) -> Iterator[list[RerouteEdit]]:
    """Apply ``reroutes`` (each placed at its flag point) while ``pipe`` generates.

    ``kinds``: each reroute's flag point -> the concept kind its statistics hold.
    """
    if getattr(pipe, "tokenizer", None) is None or getattr(pipe, "text_encoder", None) is None:
        raise SaeuronError("Reroute needs a pipeline with a tokenizer and text encoder, not a bare U-Net")
    unet = pipe.unet
    edits = [RerouteEdit(r, saes[r.point], stats[r.point], pipe, kinds[r.point], vocabulary) for r in reroutes]
    state = [_RowState() for _ in edits]
    clock = StepClock()
    recorder = TextRecorder()
    with HookSet(unet) as hooks, contextlib.ExitStack() as stack:
        hooks.forward_hook(f"{name}:text", pipe.text_encoder, recorder.hook, with_kwargs=True)
        blocks: dict[str, list[int]] = {}
        for i, edit in enumerate(edits):
            hooks.forward_hook(
                f"{name}:{i}:flags@{edit.source.point}",
                resolve_point(unet, edit.source.point),
                _flag_hook(edit, state[i], clock, cfg),
            )
            for block in edit.source.blocks or cross_attention_blocks(unet):
                blocks.setdefault(block, []).append(i)
        for block, users in blocks.items():
            module = resolve_point(unet, block)
            hooks.forward_hook(
                f"{name}:{block}",
                module,
                _block_hook([edits[i] for i in users], [state[i] for i in users], recorder, clock, cfg),
                with_kwargs=True,
            )
        _start_clock(hooks, name, clock, stack, scheduler)
        yield edits


class _RowState:
    """Per edit, per generation: the running detection and the latest token flags."""

    def __init__(self):
        self.index = -1
        self.batch = -1
        self.shares: list[Tensor] = []
        self.detected: Tensor | None = None  # [n_concepts, B] bool
        self.tokens: Tensor | None = None  # [n_concepts, B, H, W] bool
        self.asked_elsewhere: Tensor | None = None  # [n_concepts, B] bool, once per generation
        self.untrusted: Tensor | None = None  # [B] bool: no genuine token ids, once per generation

    def new_step(self, index: int, batch: int) -> None:
        # the index went back, or the batch changed (an attack's single U-Net calls): a new generation
        if index < self.index or batch != self.batch:
            self.shares, self.detected, self.tokens, self.asked_elsewhere, self.untrusted = [], None, None, None, None
        self.index, self.batch = index, batch


def cond_rows(batch: int, cfg: bool) -> slice:
    """The conditional rows of a U-Net batch ([uncond, cond] under guidance)."""
    return slice(batch // 2, batch) if cfg else slice(0, batch)


def rerun_block(module, args: tuple, kwargs: dict, rows: slice, context: Tensor) -> Tensor:
    """The block's output [len(rows), C, H, W] for its input's ``rows`` with ``context`` as the
    text it cross-attends to. ``forward``, not ``__call__``: the second pass runs none of the
    block's hooks (flags, edits, captures)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    call = {k: v for k, v in kwargs.items() if k != "hidden_states"}
    call["encoder_hidden_states"] = context
    return _block_tensor(module.forward(hidden[rows], *args[1:], **call))


def _flag_hook(edit: RerouteEdit, state: _RowState, clock: StepClock, cfg: bool):
    def flag(_module, _args, output):
        step = clock.now()
        x = _block_tensor(output)
        x = x[cond_rows(x.shape[0], cfg)]
        state.new_step(step.index, x.shape[0])
        if edit.source.steps is not None and not edit.source.steps.contains(step.index):
            state.detected = None
            return None
        tokens = edit.flags.tokens(x.detach(), float(step.timestep))
        state.tokens = tokens
        state.shares.append(tokens.float().mean((2, 3)))
        state.detected = torch.stack(state.shares).mean(0) >= edit.source.detect
        return None

    return flag


def _block_hook(edits: list[RerouteEdit], states: list[_RowState], recorder: TextRecorder, clock: StepClock, cfg: bool):
    def reroute(module, args, kwargs, output):
        step = clock.now()
        out = _block_tensor(output)
        rows = cond_rows(out.shape[0], cfg)
        x = out[rows]
        batch, _, height, width = x.shape
        for s in states:
            s.new_step(step.index, batch)
        context = kwargs.get("encoder_hidden_states")
        if context is None:
            raise SaeuronError("a rerouted block was called without encoder_hidden_states: is it cross-attention?")
        context = context[rows]
        counterfactual = context
        mask = torch.zeros(batch, 1, height, width, device=x.device, dtype=x.dtype)
        for edit, state in zip(edits, states):
            if state.detected is None:
                continue
            if state.asked_elsewhere is None:
                state.asked_elsewhere, state.untrusted = edit.read(context, recorder)
            for c, swap in enumerate(edit.swaps):
                shown = state.detected[c].to(x.device) & ~state.asked_elsewhere[c].to(x.device)
                if not bool(shown.any()):
                    continue
                # a context without genuine ids: the anchor's prompt, on every token
                whole = shown & state.untrusted.to(x.device) if edit.source.untrusted == "anchor" else shown & False
                shown = shown & ~whole
                counterfactual, found = swap.apply(counterfactual, shown)
                elsewhere = shown & ~found  # no word to swap: the anchor's prompt, on flagged tokens only
                if bool((whole | elsewhere).any()):
                    anchor = swap.anchor_context.to(device=context.device, dtype=context.dtype)
                    counterfactual = torch.where(
                        (whole | elsewhere)[:, None, None], anchor.expand_as(counterfactual), counterfactual
                    )
                if bool(elsewhere.any()):
                    tokens = state.tokens[c][:, None].to(x.dtype)
                    if tokens.shape[-2:] != (height, width):
                        tokens = F.interpolate(tokens, size=(height, width), mode="nearest")
                    mask = torch.maximum(mask, tokens * elsewhere[:, None, None, None])
                everywhere = whole | (shown & found)
                mask = torch.maximum(mask, everywhere[:, None, None, None].to(x.dtype).expand_as(mask))
        if not bool(mask.any()):
            return None
        alternative = rerun_block(module, args, kwargs, rows, counterfactual)
        edited = out.clone()
        edited[rows] = x + mask * (alternative - x)
        return _replace_block_tensor(output, edited)

    return reroute
