"""How interventions are applied: each compiled against its SAE and statistics, and the
``PointEditor`` hook that edits one block output with them (``apply_interventions``).

The block output becomes ``x + (z' - z) @ W_dec`` over the edited latents only, so every token
where no code changed keeps its exact value; with nothing changed the block's own output object
is handed back. Concept statistics are looked up by timestep (the nearest statistics step),
``StepWindow`` by step index.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from .errors import SaeuronError
from .hooks import Halves, Step, edit_block_output, from_tokens, half_slice, normalize_point, to_tokens
from .intervention_specs import AddConcept, Intervention, Replace, ScaleFeatures, Steer, StepWindow, Unlearn
from .sae import TopKSae
from .scoring import SCORES, ConceptStats, mean_activation_all, other_means, select, select_union


def _in_window(steps: StepWindow | None, step: Step) -> bool:
    return steps is None or steps.contains(step.index)


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
        for concept, _ in add.per_concept():
            stats.index(concept)  # an unknown concept fails here, by name
        unit = stats.typical_top.float()
        rows = select_union(stats, add.per_concept(), add.score)
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
                    f"statistics for {self.point} cover {stats.n_latents} latents "
                    f"but its SAE has {self.sae.num_latents}"
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
