"""Feature-level edits of U-Net block outputs through an SAE: unlearning, scaling, steering.

Each intervention maps the SAE code z of every token to an edited code z'; the block output
becomes ``x + (z' - z) @ W_dec``, which touches only the edited latents' decoder rows and leaves
x exactly as it was at every token where nothing changed (METHOD section 4). When no token
changes, the hook hands back the block's own output object.

Two clocks, on purpose:

- ``StepWindow`` counts *step indices* (0 = the first denoising step of the current generation,
  as defined in ``hooks``): "the first 10 steps" means the same for any scheduler spacing.
- Concept statistics are looked up by *timestep*: the statistics' step whose timestep is nearest
  to the current one, so statistics gathered with 50 steps serve a 20-step generation.

Interventions apply in list order; edits of the same latent compose. By default they edit both
CFG halves of the batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence, Union

import torch
from torch import Tensor, nn

from .errors import SaeuronError
from .hooks import Halves, Step, edit_block_output, from_tokens, half_slice, normalize_point, to_tokens
from .sae import TopKSae
from .scoring import SCORES, ConceptStats, check_score, mean_activation_all, other_means, select


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


def _in_window(steps: StepWindow | None, step: Step) -> bool:
    return steps is None or steps.contains(step.index)


def _as_tuple(value, name: str) -> tuple:
    if isinstance(value, (str, int, float)):
        return (value,)
    if not isinstance(value, (tuple, list)) or not value:
        raise SaeuronError(f"{name} must be a non-empty tuple, got {value!r}")
    return tuple(value)


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
        check_score(self.score)
        object.__setattr__(self, "concepts", _as_tuple(self.concepts, "concepts"))
        for name in ("tau", "gamma"):
            values = _as_tuple(getattr(self, name), name)
            if len(values) > 1:
                object.__setattr__(self, name, values)  # a list becomes a (hashable) tuple
            if len(values) not in (1, len(self.concepts)):
                raise SaeuronError(
                    f"{name} needs one value or one per concept ({len(self.concepts)}), got {len(values)}"
                )
        for tau in _as_tuple(self.tau, "tau"):
            if not 0 < tau < 100:
                raise SaeuronError(f"tau is a percentile in (0, 100), got {tau}")

    def per_concept(self) -> list[tuple[str, float, float]]:
        """(concept, tau, gamma) for each concept."""
        taus, gammas = _as_tuple(self.tau, "tau"), _as_tuple(self.gamma, "gamma")
        return [(c, taus[i % len(taus)], gammas[i % len(gammas)]) for i, c in enumerate(self.concepts)]


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
        check_score(self.score)
        object.__setattr__(self, "concepts", _as_tuple(self.concepts, "concepts"))
        taus = _as_tuple(self.tau, "tau")
        if len(taus) > 1:
            object.__setattr__(self, "tau", taus)
        if len(taus) not in (1, len(self.concepts)):
            raise SaeuronError(f"tau needs one value or one per concept ({len(self.concepts)}), got {len(taus)}")
        for tau in taus:
            if not 0 < tau < 100:
                raise SaeuronError(f"tau is a percentile in (0, 100), got {tau}")

    def per_concept(self) -> list[tuple[str, float]]:
        """(concept, tau) for each concept."""
        taus = _as_tuple(self.tau, "tau")
        return [(c, taus[i % len(taus)]) for i, c in enumerate(self.concepts)]


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
        check_score(self.score)
        object.__setattr__(self, "concepts", _as_tuple(self.concepts, "concepts"))
        for name in ("tau", "strength"):
            values = _as_tuple(getattr(self, name), name)
            if len(values) > 1:
                object.__setattr__(self, name, values)
            if len(values) not in (1, len(self.concepts)):
                raise SaeuronError(
                    f"{name} needs one value or one per concept ({len(self.concepts)}), got {len(values)}"
                )
        for tau in _as_tuple(self.tau, "tau"):
            if not 0 < tau < 100:
                raise SaeuronError(f"tau is a percentile in (0, 100), got {tau}")
        for strength in _as_tuple(self.strength, "strength"):
            if not strength > 0:
                raise SaeuronError(f"replacement strength must be > 0, got {strength}")
        if self.latents not in REPLACE_LATENTS:
            raise SaeuronError(f"latents must be one of {', '.join(REPLACE_LATENTS)}, got {self.latents!r}")
        if not isinstance(self.target, str) or not self.target:
            raise SaeuronError(f"target must be {' or '.join(REPLACE_TARGETS)} or a concept name, got {self.target!r}")

    def per_concept(self) -> list[tuple[str, float, float]]:
        """(concept, tau, strength) for each concept."""
        taus, strengths = _as_tuple(self.tau, "tau"), _as_tuple(self.strength, "strength")
        return [(c, taus[i % len(taus)], strengths[i % len(strengths)]) for i, c in enumerate(self.concepts)]


Intervention = Union[Unlearn, ScaleFeatures, Steer, AddConcept, Replace]


class UnlearnEdit:
    """An ``Unlearn`` compiled against its statistics: per statistics step, the selected latents,
    their multipliers gamma_c * m_c[t][i] and firing thresholds (mean over all concepts)."""

    def __init__(self, unlearn: Unlearn, stats: ConceptStats, device: torch.device):
        self.source = unlearn
        self.stats = stats
        selected = torch.zeros(stats.means.shape[1:], dtype=torch.bool)
        factors = torch.zeros(stats.means.shape[1:])
        for concept, tau, gamma in unlearn.per_concept():
            chosen = torch.zeros_like(selected)
            for row, ids in enumerate(select(SCORES[unlearn.score](stats, concept), tau)):
                chosen[row, ids] = True
            candidate = gamma * stats.means[stats.index(concept)].float()
            # union over concepts; a latent chosen twice keeps the larger-magnitude multiplier
            wins = chosen & (~selected | (candidate.abs() > factors.abs()))
            factors = torch.where(wins, candidate, factors)
            selected |= chosen
        thresholds = mean_activation_all(stats).float()
        rows = [row.nonzero().squeeze(1) for row in selected]
        self.latents_per_row = [ids.to(device) for ids in rows]
        self.multipliers_per_row = [factors[r, ids].to(device) for r, ids in enumerate(rows)]
        self.thresholds_per_row = [thresholds[r, ids].to(device) for r, ids in enumerate(rows)]

    def latents(self, step: Step) -> Tensor:
        return self.latents_per_row[self.stats.row_for_timestep(step.timestep)]

    def apply(self, z: Tensor, columns: Tensor, step: Step, grid: tuple[int, int, int]) -> None:
        row = self.stats.row_for_timestep(step.timestep)
        current = z[:, columns]
        fired = current > self.thresholds_per_row[row]
        z[:, columns] = torch.where(fired, current * self.multipliers_per_row[row], current)


class AddConceptEdit:
    """An ``AddConcept`` compiled against its statistics: per statistics step, the selected
    latents and the amount added to each (strength x typical top activation)."""

    def __init__(self, add: AddConcept, stats: ConceptStats, device: torch.device):
        if stats.typical_top is None:
            raise SaeuronError("adding a concept needs the statistics' typical top activations (FeatureStats examples)")
        self.source, self.stats = add, stats
        selected = torch.zeros(stats.means.shape[1:], dtype=torch.bool)
        for concept, tau in add.per_concept():
            stats.index(concept)  # an unknown concept fails here, by name
            for row, ids in enumerate(select(SCORES[add.score](stats, concept), tau)):
                selected[row, ids] = True
        unit = stats.typical_top.float()
        rows = [row.nonzero().squeeze(1) for row in selected]
        self.latents_per_row = [ids.to(device) for ids in rows]
        self.amounts_per_row = [(add.strength * unit[ids]).to(device) for ids in rows]

    def latents(self, step: Step) -> Tensor:
        return self.latents_per_row[self.stats.row_for_timestep(step.timestep)]

    def apply(
        self, z: Tensor, columns: Tensor, step: Step, grid: tuple[int, int, int], rows: slice | None = None
    ) -> None:
        """``rows``: the batch rows to steer (None: all)."""
        amounts = self.amounts_per_row[self.stats.row_for_timestep(step.timestep)]
        if rows is None:
            z[:, columns] += amounts
            return
        _, height, width = grid
        z[rows.start * height * width : rows.stop * height * width, columns] += amounts


class ReplaceEdit:
    """A ``Replace`` compiled against its statistics: per statistics step and concept, the flag
    latents and thresholds, the edited latents and their shift strength * (m_target - m_c)."""

    def __init__(self, replace: Replace, stats: ConceptStats, device: torch.device):
        self.source = replace
        self.stats = stats
        thresholds = mean_activation_all(stats).float()
        means = stats.means.float()
        unit = torch.nn.functional.normalize(means, dim=-1)
        n_steps = means.shape[1]
        self.per_row: list[list[tuple[Tensor, Tensor, Tensor, Tensor]]] = [[] for _ in range(n_steps)]
        for concept, tau, strength in replace.per_concept():
            c = stats.index(concept)
            flags = select(SCORES[replace.score](stats, concept), tau)
            others = other_means(stats, concept).float()
            for t in range(n_steps):
                target = self._target(concept, c, t, means, unit, others)
                shift = strength * (target - means[c, t])
                flag_ids = flags[t]
                if replace.latents == "all":
                    ids = torch.arange(means.shape[2])
                else:
                    towards = torch.topk(target - means[c, t], max(1, len(flag_ids))).indices
                    ids = torch.cat([flag_ids, towards]).unique()
                self.per_row[t].append(
                    (flag_ids.to(device), thresholds[t, flag_ids].to(device), ids.to(device), shift[ids].to(device))
                )
        self.latents_per_row = [torch.cat([torch.cat([f, i]) for f, _, i, _ in row]).unique() for row in self.per_row]

    def _target(self, concept: str, c: int, t: int, means: Tensor, unit: Tensor, others: Tensor) -> Tensor:
        kind = self.source.target
        if kind == "others":
            return others[t]
        if kind == "nearest":
            similarity = unit[:, t] @ unit[c, t]
            similarity[c] = -2.0
            return means[int(similarity.argmax()), t]
        if kind == concept:
            raise SaeuronError(f"replacement target {kind!r} is the removed concept itself")
        return means[self.stats.index(kind), t]

    def latents(self, step: Step) -> Tensor:
        return self.latents_per_row[self.stats.row_for_timestep(step.timestep)]

    def apply(self, z: Tensor, columns: Tensor, step: Step, grid: tuple[int, int, int]) -> None:
        row = self.stats.row_for_timestep(step.timestep)
        latents = self.latents_per_row[row]
        for flag_ids, thresholds, ids, shift in self.per_row[row]:
            flag_cols = columns[torch.searchsorted(latents, flag_ids)]
            flagged = (z[:, flag_cols] > thresholds).any(1, keepdim=True)
            cols = columns[torch.searchsorted(latents, ids)]
            current = z[:, cols]
            z[:, cols] = torch.where(flagged, (current + shift).clamp(min=0), current)


class _FeatureEdit:
    """A ``ScaleFeatures`` or ``Steer`` on fixed latent ids."""

    def __init__(self, source: ScaleFeatures | Steer, device: torch.device):
        self.source = source
        self._latents = torch.tensor(source.features, dtype=torch.long, device=device)

    def latents(self, step: Step) -> Tensor:
        return self._latents

    def apply(self, z: Tensor, columns: Tensor, step: Step, grid: tuple[int, int, int]) -> None:
        if isinstance(self.source, ScaleFeatures):
            z[:, columns] = z[:, columns] * self.source.factor
            return
        batch, height, width = grid
        tokens = self.source.token_mask(height, width, z.device).repeat(batch).nonzero().squeeze(1)
        z[tokens[:, None], columns] += self.source.strength


class PointEditor:
    """The edit applied at one hook point: ``editor(x [B, C, H, W], step) -> x'``."""

    def __init__(
        self,
        point: str,
        sae: TopKSae,
        interventions: Sequence[Intervention],
        stats: ConceptStats | None,
        halves: Halves = "both",
        cfg: bool = True,
    ):
        """``halves`` / ``cfg``: which CFG rows the hook hands this editor (as in ``hooks``), so
        that a conditional-only edit finds its rows."""
        self.point, self.sae = point, sae
        self.halves, self.cfg = halves, cfg
        self._edits = [self._compile(iv, stats) for iv in interventions]

    def _compile(
        self, iv: Intervention, stats: ConceptStats | None
    ) -> UnlearnEdit | AddConceptEdit | ReplaceEdit | _FeatureEdit:
        if isinstance(iv, (Unlearn, AddConcept, Replace)):
            if stats is None:
                raise SaeuronError(f"unlearning at {self.point} needs concept statistics for that point")
            if stats.n_latents != self.sae.num_latents:
                raise SaeuronError(
                    f"statistics for {self.point} cover {stats.n_latents} latents but its SAE has {self.sae.num_latents}"
                )
            if isinstance(iv, Unlearn):
                return UnlearnEdit(iv, stats, self.sae.device)
            return (
                AddConceptEdit(iv, stats, self.sae.device)
                if isinstance(iv, AddConcept)
                else ReplaceEdit(iv, stats, self.sae.device)
            )
        bad = [f for f in iv.features if not isinstance(f, int) or not 0 <= f < self.sae.num_latents]
        if bad:
            raise SaeuronError(
                f"feature ids {bad} are out of range for the SAE at {self.point} ({self.sae.num_latents} latents)"
            )
        if len(set(iv.features)) != len(iv.features):
            raise SaeuronError(f"feature ids repeat in {iv.features}")
        return _FeatureEdit(iv, self.sae.device)

    def _cond_rows(self, batch: int) -> slice:
        """The conditional CFG rows of a batch of ``batch`` handed to this editor."""
        if self.halves == "uncond":
            return slice(0, 0)
        if self.halves == "cond" or not self.cfg:
            return slice(0, batch)
        return half_slice(batch, "cond", self.cfg)

    def __call__(self, x: Tensor, step: Step) -> Tensor:
        batch, channels, height, width = x.shape
        if channels != self.sae.d_in:
            raise SaeuronError(
                f"the SAE at {self.point} has d_in={self.sae.d_in} but the block outputs {channels} channels"
            )
        active = [e for e in self._edits if _in_window(e.source.steps, step)]
        reference_form = any(isinstance(e.source, Unlearn) and e.source.reference_error_term for e in active)
        latent_sets = [e.latents(step) for e in active]
        touched = (
            torch.cat(latent_sets).unique() if latent_sets else torch.empty(0, dtype=torch.long, device=self.sae.device)
        )
        if not len(touched) and not reference_form:
            return x
        tokens = to_tokens(x).reshape(-1, channels)
        # Codes, edits and the update are computed in the SAE's compute precision (float32 for
        # 16-bit SAEs and for half-precision models); only the final update is cast to x's dtype.
        top_acts, top_indices = self.sae.encode(tokens)
        z = _codes_of(top_acts, top_indices, touched)  # [N, n_touched]
        z_edited = z.clone()
        for edit, latents in zip(active, latent_sets):
            columns = torch.searchsorted(touched, latents)
            if isinstance(edit, AddConceptEdit) and edit.source.cond_only:
                edit.apply(z_edited, columns, step, (batch, height, width), self._cond_rows(batch))
            else:
                edit.apply(z_edited, columns, step, (batch, height, width))
        delta = z_edited - z
        rows = self.sae.W_dec[touched].to(delta.dtype)
        scale = self.sae.token_scale(tokens)  # input_unit_norm: decoded directions are in std units
        if reference_form:
            x_hat = self.sae.decode(top_acts, top_indices, tokens)
            direction = delta @ rows if scale is None else (delta @ rows) * scale
            out = (2 * x_hat - tokens.to(device=x_hat.device, dtype=x_hat.dtype) + direction).to(
                device=x.device, dtype=x.dtype
            )
            return _to_map(out, x.shape)
        changed = delta.ne(0).any(1).nonzero().squeeze(1)
        if not len(changed):
            return x
        update = delta[changed] @ rows
        if scale is not None:
            update = update * scale[changed]
        # the sum in float32, rounded once to x's dtype (a half-precision add would round twice);
        # the SAE may sit on another device than the block (e.g. a CPU SAE on a GPU model)
        changed = changed.to(tokens.device)
        new_rows = (tokens[changed].to(update.dtype) + update.to(tokens.device)).to(x.dtype)
        return _to_map(tokens.index_copy(0, changed, new_rows), x.shape)


def _to_map(flat_tokens: Tensor, shape: torch.Size) -> Tensor:
    """[B*H*W, C] tokens back to a [B, C, H, W] map."""
    batch, channels, height, width = shape
    return from_tokens(flat_tokens.reshape(batch, height * width, channels), height, width)


def _codes_of(top_acts: Tensor, top_indices: Tensor, latents: Tensor) -> Tensor:
    """z[:, latents] [N, len(latents)] from the sparse codes (0 where a latent is not in the top-k)."""
    if len(latents) > 4 * top_indices.shape[1]:  # many latents (a dense edit): scatter, not compare each
        width = int(max(latents.max(), top_indices.max())) + 1
        dense = top_acts.new_zeros(top_acts.shape[0], width).scatter_(1, top_indices, top_acts)
        return dense[:, latents]
    hits = top_indices[:, :, None] == latents[None, None, :]
    return (hits * top_acts[:, :, None]).sum(1)


@contextlib.contextmanager
def apply_interventions(
    unet: nn.Module,
    saes: Mapping[str, TopKSae],
    interventions: Sequence[Intervention],
    stats: ConceptStats | Mapping[str, ConceptStats] | None = None,
    halves: Halves = "both",
    cfg: bool = True,
    name: str = "interventions",
    scheduler=None,
) -> Iterator[dict[str, PointEditor]]:
    """Apply ``interventions`` inside every U-Net call of the block; yields the editor per point.

    ``saes`` and ``stats`` map hook points to their SAE and concept statistics; with a single SAE
    one ``ConceptStats`` may be passed as is. ``halves``/``cfg`` address CFG halves as in ``hooks``;
    ``scheduler`` (the pipeline's) counts steps for ``StepWindow`` (``hooks``). Most callers want
    ``SaeBundle.hooked``, which passes all of these.
    """
    saes = {normalize_point(p): sae for p, sae in saes.items()}
    if not saes:
        raise SaeuronError("no SAE given")
    stats_by_point = _stats_by_point(stats, saes)
    editors = {
        point: PointEditor(point, saes[point], group, stats_by_point.get(point), halves, cfg)
        for point, group in _group_by_point(interventions, saes).items()
    }
    with contextlib.ExitStack() as stack:
        for point, editor in editors.items():
            stack.enter_context(
                edit_block_output(
                    unet, point, editor, name=f"{name}:{point}", halves=halves, cfg=cfg, scheduler=scheduler
                )
            )
        yield editors


def _group_by_point(
    interventions: Sequence[Intervention], saes: Mapping[str, TopKSae]
) -> dict[str, list[Intervention]]:
    groups: dict[str, list[Intervention]] = {}
    for iv in interventions:
        if not isinstance(iv, (Unlearn, ScaleFeatures, Steer, AddConcept, Replace)):
            raise SaeuronError(f"not an intervention: {iv!r}")
        if iv.point is None and len(saes) > 1:
            raise SaeuronError(
                f"{type(iv).__name__} does not name its hook point, and SAEs are given for {', '.join(saes)}"
            )
        point = normalize_point(iv.point) if iv.point is not None else next(iter(saes))
        if point not in saes:
            raise SaeuronError(f"no SAE for hook point {iv.point!r}; SAEs are given for {', '.join(saes)}")
        groups.setdefault(point, []).append(iv)
    return groups


def _stats_by_point(
    stats: ConceptStats | Mapping[str, ConceptStats] | None, saes: Mapping[str, TopKSae]
) -> dict[str, ConceptStats]:
    if stats is None:
        return {}
    if isinstance(stats, ConceptStats):
        if len(saes) > 1:
            raise SaeuronError("with several SAEs, pass stats as a mapping from hook point to statistics")
        return {next(iter(saes)): stats}
    return {normalize_point(p): s for p, s in stats.items()}
