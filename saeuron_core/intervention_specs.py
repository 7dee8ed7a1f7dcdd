"""What to edit: the interventions as frozen dataclasses, validated when they are made.

``Unlearn``, ``ScaleFeatures``, ``Steer``, ``AddConcept`` and ``Replace`` say which latents of
which hook point change, by how much and in which ``StepWindow``; ``intervention_hook`` compiles
them against an SAE and its statistics and applies them. Import both from ``interventions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

from .errors import SaeuronError
from .scoring import check_score


@dataclass(frozen=True)
class StepWindow:
    """Denoising step indices ``start <= index < stop`` (``stop`` None: to the last step)."""

    start: int = 0
    stop: int | None = None

    def __post_init__(self):
        if self.start < 0 or (self.stop is not None and self.stop <= self.start):
            raise SaeuronError(f"step window needs 0 <= start < stop, got start={self.start}, stop={self.stop}")

    def contains(self, index: int) -> bool:
        return index >= self.start and (self.stop is None or index < self.stop)


def _as_tuple(value, name: str) -> tuple:
    if isinstance(value, (str, int, float)):
        return (value,)
    if not isinstance(value, (tuple, list)) or not value:
        raise SaeuronError(f"{name} must be a non-empty tuple, got {value!r}")
    return tuple(value)


def _check_per_concept(iv, *names: str) -> None:
    """What every concept intervention checks when made: its score, its concepts as a tuple, and
    tau and each of ``names`` one value or one per concept (a list kept as a hashable tuple),
    every tau a percentile in (0, 100)."""
    check_score(iv.score)
    object.__setattr__(iv, "concepts", _as_tuple(iv.concepts, "concepts"))
    for name in ("tau", *names):
        values = _as_tuple(getattr(iv, name), name)
        if len(values) > 1:
            object.__setattr__(iv, name, values)  # a list becomes a (hashable) tuple
        if len(values) not in (1, len(iv.concepts)):
            raise SaeuronError(f"{name} needs one value or one per concept ({len(iv.concepts)}), got {len(values)}")
    for tau in _as_tuple(iv.tau, "tau"):
        if not 0 < tau < 100:
            raise SaeuronError(f"tau is a percentile in (0, 100), got {tau}")


def _each(iv, name: str) -> list:
    """``iv``'s field ``name`` per concept (one value serves every concept)."""
    values = _as_tuple(getattr(iv, name), name)
    return [values[i % len(values)] for i in range(len(iv.concepts))]


@dataclass(frozen=True)
class Unlearn:
    """SAeUron unlearning of ``concepts`` (METHOD section 4).

    At each step, for every latent i selected for a concept c (score above the ``tau`` percentile)
    and every token where z[i] exceeds i's mean activation over all concepts at that step:
    z[i] <- z[i] * gamma_c * m_c[t][i]. A selected latent outside a token's top-k has z = 0
    there: it did not fire and is left alone. Several concepts: the union of their selections;
    a latent selected by more than one concept takes the multiplier of largest magnitude.
    ``tau`` and ``gamma`` are one value for all concepts or one per concept.
    ``reference_error_term`` reproduces the reference code's output ``x_hat' + x_hat - x``
    (= ``2 x_hat - x`` with nothing edited), for comparison only.
    """

    concepts: tuple[str, ...]
    tau: float | tuple[float, ...] = 99.999
    gamma: float | tuple[float, ...] = -1.0
    steps: StepWindow | None = None
    reference_error_term: bool = False
    point: str | None = None
    """Hook point whose SAE this edits; None when only one SAE is given."""
    score: str = "paper"
    """Which concept score selects the latents (``scoring.SCORES``): the paper's, or "specific"."""

    def __post_init__(self):
        _check_per_concept(self, "gamma")

    def per_concept(self) -> list[tuple[str, float, float]]:
        """(concept, tau, gamma) for each concept."""
        return list(zip(self.concepts, _each(self, "tau"), _each(self, "gamma")))


@dataclass(frozen=True)
class ScaleFeatures:
    """Multiply latents ``features`` by ``factor`` wherever they fire (0 ablates them)."""

    features: tuple[int, ...]
    factor: float
    steps: StepWindow | None = None
    point: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "features", _as_tuple(self.features, "features"))


Mask = Union[tuple[int, ...], tuple[tuple[bool, ...], ...]]


@dataclass(frozen=True)
class Steer:
    """Add ``strength * W_dec[i]`` for each of ``features`` at the chosen tokens.

    Unlike scaling this injects a feature where it is absent. ``mask`` chooses tokens: None for
    all, an [H, W] bool map (tensor or nested tuples) or a tuple of token indices h * W + w.
    """

    features: tuple[int, ...]
    strength: float
    mask: Mask | None = None
    steps: StepWindow | None = None
    point: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "features", _as_tuple(self.features, "features"))
        if isinstance(self.mask, Tensor):
            if self.mask.ndim != 2 or self.mask.dtype != torch.bool:
                raise SaeuronError(
                    f"a steering mask must be an [H, W] bool map, got {self.mask.dtype} {tuple(self.mask.shape)}"
                )
            # Stored as nested tuples: the dataclass stays hashable and comparable.
            object.__setattr__(self, "mask", tuple(tuple(row) for row in self.mask.tolist()))
        elif isinstance(self.mask, list):
            object.__setattr__(self, "mask", tuple(tuple(r) if isinstance(r, (list, tuple)) else r for r in self.mask))

    def token_mask(self, height: int, width: int, device: torch.device) -> Tensor:
        """[H*W] bool: the tokens this steer edits on an H x W map."""
        if self.mask is None:
            return torch.ones(height * width, dtype=torch.bool, device=device)
        if self.mask and isinstance(self.mask[0], tuple):
            grid = torch.tensor(self.mask, dtype=torch.bool, device=device)
            if grid.shape != (height, width):
                raise SaeuronError(f"steering mask is {tuple(grid.shape)} but the map is {height}x{width}")
            return grid.reshape(-1)
        tokens = torch.tensor(self.mask, dtype=torch.long, device=device)
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= height * width):
            raise SaeuronError(f"steering token indices must be in [0, {height * width}) for a {height}x{width} map")
        return torch.zeros(height * width, dtype=torch.bool, device=device).index_fill_(0, tokens, True)


@dataclass(frozen=True)
class AddConcept:
    """Steer ``concepts`` in: the counterpart of ``Unlearn`` that adds instead of removes.

    At each step, every latent selected for a concept (the same selection as ``Unlearn``: score
    above the ``tau`` percentile, ``score`` as there) is raised at every token by
    z[i] <- z[i] + strength * a_i, where a_i is the latent's typical top activation (the median
    of its strongest stored activations, ``ConceptStats.typical_top``): the steering unit of a
    single-feature ``Steer`` made in the explorer, so "1x" means "as strongly as where it usually
    fires most". Several concepts: the union of their selections.

    By default only the conditional CFG half is steered: guidance computes
    eps_uncond + g (eps_cond - eps_uncond), so the same addition to both halves largely cancels in
    the guided difference, while an addition to the conditional half alone is amplified by g.
    """

    concepts: tuple[str, ...]
    strength: float
    tau: float | tuple[float, ...] = 99.999
    steps: StepWindow | None = None
    point: str | None = None
    """Hook point whose SAE this edits; None when only one SAE is given."""
    score: str = "paper"
    cond_only: bool = True
    """Steer the conditional CFG half only (False: every row of the batch the hook edits)."""

    def __post_init__(self):
        _check_per_concept(self)

    def per_concept(self) -> list[tuple[str, float]]:
        """(concept, tau) for each concept."""
        return list(zip(self.concepts, _each(self, "tau")))


REPLACE_TARGETS = ("others", "nearest")
"""Where ``Replace`` pushes a concept's code: the mean code of the kind's other concepts, or the
mean code of the single other concept nearest to it (cosine of the step's mean codes)."""
REPLACE_LATENTS = ("selected", "all")


@dataclass(frozen=True)
class Replace:
    """Replacement in distribution instead of negation, on the tokens that show ``concepts``.

    A token is flagged for concept c at step t when any latent selected for c (as ``Unlearn``
    selects them) fires above its mean over all concepts. On flagged tokens the code moves by the
    difference of mean codes towards a target concept's and is clipped at 0 (codes stay codes)::

        z'[L] = max(0, z[L] + strength * (m_target[t][L] - m_c[t][L]))

    ``target``: "others" (the count-weighted mean of the kind's other concepts) or "nearest" (the
    other concept whose mean code at t is nearest by cosine), or the name of another concept.
    ``latents``: "selected" (L = c's selected latents and as many of the target's most
    over-represented latents, largest m_target - m_c) or "all" (every latent: the whole mean-code
    difference). Negation (``Unlearn``'s gamma -5..-30) removes what the concept adds and wrecks
    the image around it; this moves the token towards what another concept looks like there.
    """

    concepts: tuple[str, ...]
    tau: float | tuple[float, ...] = 99.999
    strength: float | tuple[float, ...] = 1.0
    target: str = "nearest"
    latents: str = "selected"
    steps: StepWindow | None = None
    point: str | None = None
    score: str = "paper"

    def __post_init__(self):
        _check_per_concept(self, "strength")
        for strength in _as_tuple(self.strength, "strength"):
            if not strength > 0:
                raise SaeuronError(f"replacement strength must be > 0, got {strength}")
        if self.latents not in REPLACE_LATENTS:
            raise SaeuronError(f"latents must be one of {', '.join(REPLACE_LATENTS)}, got {self.latents!r}")
        if not isinstance(self.target, str) or not self.target:
            raise SaeuronError(f"target must be {' or '.join(REPLACE_TARGETS)} or a concept name, got {self.target!r}")

    def per_concept(self) -> list[tuple[str, float, float]]:
        """(concept, tau, strength) for each concept."""
        return list(zip(self.concepts, _each(self, "tau"), _each(self, "strength")))


REROUTE_UNTRUSTED = ("swap", "anchor")
"""What a ``Reroute`` does with a context that has no genuine token ids (its field ``untrusted``)."""


@dataclass(frozen=True)
class Reroute:
    """Counterfactual rerouting: where the SAE sees a concept, cross-attention sees it swapped.

    Detection at the flag SAE's ``point``: at step t the share s_t of map tokens on which any
    latent selected for concept c (``tau``, ``score``: as ``Unlearn`` selects them) fires above
    its mean over all concepts; an image shows c from the first step where
    mean(s_0 .. s_t) >= ``detect``. Then each of ``blocks`` (cross-attention blocks; empty:
    every one outside the mid block) runs again on its input with the counterfactual text
    context ctx', and its output becomes out + mask * (out(ctx') - out), conditional CFG rows only.

    ctx': from the token p most similar to c's word (mean hidden state over c's reference
    prompts, cosine >= ``match``), ctx'[p + k] = ctx[p + k] + delta[k], where delta[k] is the mean
    change of the reference prompts' hidden states at k positions after the word when c's word is
    replaced by the ``anchor``'s (a concept name, or "nearest": the concept whose mean code is
    nearest to c's); mask = every token. Where no token matches (a paraphrase, a soft prompt),
    ctx' is the anchor's own prompt and mask = the tokens where c's latents fire.

    Why: on the bundled model a style enters at several cross-attention blocks, and scaling its
    latents at one block by a negative multiplier removes it only by wrecking the image; moving the
    block towards what another concept's text produces there removes it and keeps the object.
    """

    concepts: tuple[str, ...]
    anchor: str | tuple[str, ...] = "nearest"
    blocks: tuple[str, ...] = ()
    tau: float | tuple[float, ...] = 99.999
    detect: float = 0.3
    match: float = 0.8
    steps: StepWindow | None = None
    point: str | None = None
    """Hook point of the SAE whose latents detect the concepts."""
    score: str = "paper"
    heed_prompt: bool = True
    """Where the pipeline's text encoder made a row's context, read the prompt back from its token
    ids: a row whose prompt names another concept of the kind and not this one is left alone (a
    detection there is a false alarm: the text asks for the other concept)."""

    untrusted: str = "anchor"
    """A row whose context has no genuine token ids (``prompt_embeds``, a soft prompt): "anchor":
    once the concept is detected, the anchor's own prompt on every token (such a context may hide
    the concept where no word shows it; the soft-prompt attack on the sweep split left style UA at
    87.5 % this way, 60.4 % with "swap"); "swap": as any other row (the word swap where the word
    is found by similarity, else the anchor's prompt on the flagged tokens). The cost: a genuine
    prompt passed as ``prompt_embeds`` loses its own text at the rerouted blocks once detected."""

    def __post_init__(self):
        _check_per_concept(self, "anchor")
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not 0 <= self.detect <= 1:
            raise SaeuronError(f"detect is a share of tokens in [0, 1], got {self.detect}")
        if not 0 < self.match <= 1:
            raise SaeuronError(f"match is a cosine similarity in (0, 1], got {self.match}")
        if self.untrusted not in REROUTE_UNTRUSTED:
            raise SaeuronError(f"untrusted must be one of {', '.join(REROUTE_UNTRUSTED)}, got {self.untrusted!r}")
        for concept, anchor in zip(self.concepts, _each(self, "anchor")):
            if anchor == concept:
                raise SaeuronError(f"{concept!r} cannot be rerouted to itself")

    def per_concept(self) -> list[tuple[str, float, str]]:
        """(concept, tau, anchor) for each concept."""
        return list(zip(self.concepts, _each(self, "tau"), _each(self, "anchor")))


PROMPT_ADD_MAX = 3.0
"""The largest ``PromptAdd`` strength: beyond the edited prompt's own output (1) by this much the
block output leaves the range the U-Net was trained on."""


@dataclass(frozen=True)
class PromptAdd:
    """Counterfactual adding, the counterpart of ``Reroute``: cross-attention reads the prompt
    with ``concepts`` written in.

    For each conditional row whose text context came from the pipeline's text encoder, the
    prompt is read back from its token ids and the concepts are written in: a concept already
    named stays; another concept of its kind named there is replaced by it (an image shows one
    style and one object); else the kind's phrase is added before the closing punctuation
    ("in {style} style", "with {object}"). Each of ``blocks`` (cross-attention blocks; empty:
    every one, the mid block's too) runs again on its input with the re-encoded context, and its
    output becomes out + strength * (out' - out). A row whose context has no token ids (a soft
    prompt, ``prompt_embeds``) is left as it is (``PromptAddEdit.texts`` says so).

    With every block at strength 1 the conditional half is exactly what the rewritten prompt
    gives (the text reaches an SD U-Net only through these blocks): this is prompt editing, made
    a handle; fewer blocks or a strength below 1 add less of it.

    Why: steering the SAE latents a removal selects added a concept to few images on the bundled
    model (styles 30 %, objects 3 % at 2x, sweep split): a style enters at several cross-attention
    blocks and latents at one block do not carry it. The SAE's part is to show whether the
    concept's latents fire after the edit, not to make it.
    """

    concepts: tuple[str, ...]
    strength: float = 1.0
    blocks: tuple[str, ...] = ()
    steps: StepWindow | None = None
    point: str | None = None
    """Hook point whose SAE and statistics the concepts belong to (their kind, the explorer's
    before / after of their latents)."""

    def __post_init__(self):
        if isinstance(self.concepts, str) or not self.concepts:
            raise SaeuronError(f"concepts must be a non-empty list of names, got {self.concepts!r}")
        object.__setattr__(self, "concepts", tuple(self.concepts))
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if len(set(self.concepts)) != len(self.concepts):
            raise SaeuronError(f"a concept is named twice in {list(self.concepts)}")
        if not 0 < self.strength <= PROMPT_ADD_MAX:
            raise SaeuronError(f"strength must be in (0, {PROMPT_ADD_MAX:g}], got {self.strength}")


Intervention = Union[Unlearn, ScaleFeatures, Steer, AddConcept, Replace, Reroute, PromptAdd]
