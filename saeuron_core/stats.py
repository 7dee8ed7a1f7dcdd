"""Feature statistics of one SAE on one activation store, computed once and stored compactly.

From the SAE's sparse codes (top-k values + indices per token, never dense [n_latents] arrays
per token) this builds, in one streaming pass over the store:

- ``concept_sums [n_concepts, T, n_latents]`` and ``concept_counts [n_concepts]``: per concept
  and step, the sum of spatially averaged codes (the input of the importance score);
- ``frequency [n_latents]``: fraction of tokens where each latent is active;
- ``histogram [n_latents, n_bins]``: counts of nonzero activations in log-spaced bins;
- per latent and timestep bucket, the top-M (item, step, position, value) entries together with
  the latent's activation map [H*W] at that (item, step), for top-activating patches.

Saved as one ``stats.safetensors`` + ``stats.json`` (concepts, items, timesteps, bins).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import SaeuronError
from .io import load_safetensors, save_safetensors, write_json
from .scoring import ConceptStats
from .store import ActivationStore


@dataclass
class FeatureStats:
    """Loaded statistics; tensors on CPU."""

    concepts: tuple[str, ...]
    concept_kinds: tuple[str, ...]
    timesteps: tuple[int, ...]
    items: list[dict]
    height: int
    width: int
    bucket_edges: tuple[int, ...]
    """Step indices where timestep buckets start (last bucket runs to the end)."""
    guidance: float
    """Guidance scale the store was generated with (to regenerate an item's image exactly)."""
    bin_edges: torch.Tensor
    concept_sums: torch.Tensor
    concept_counts: torch.Tensor
    frequency: torch.Tensor
    histogram: torch.Tensor
    top_values: torch.Tensor  # [n_latents, n_buckets, M] (0 where empty)
    top_item: torch.Tensor  # [n_latents, n_buckets, M] int32 (-1 where empty)
    top_step: torch.Tensor
    top_pos: torch.Tensor
    top_maps: torch.Tensor  # [n_latents, n_buckets, M, H*W] fp16
    _by_kind: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_latents(self) -> int:
        return self.frequency.shape[0]

    def concepts_of_kind(self, kind: str) -> tuple[str, ...]:
        return tuple(c for c, k in zip(self.concepts, self.concept_kinds) if k == kind)

    def concept_stats(self, kind: str | None = None) -> ConceptStats:
        """Per-concept means for scoring, optionally only one kind (object / style) of concept."""
        if kind not in self._by_kind:
            self._by_kind[kind] = self._concept_stats(kind)
        return self._by_kind[kind]

    def _concept_stats(self, kind: str | None) -> ConceptStats:
        keep = [i for i, k in enumerate(self.concept_kinds) if kind is None or k == kind]
        if not keep:
            raise SaeuronError(f"no concepts of kind {kind!r} in these statistics")
        sums = self.concept_sums[keep]
        counts = self.concept_counts[keep]
        means = sums / counts.clamp(min=1)[:, None, None]
        return ConceptStats(means=means, counts=counts, concepts=tuple(self.concepts[i] for i in keep), timesteps=self.timesteps)

    def bucket_of_step(self, step: int) -> int:
        return max(i for i, e in enumerate(self.bucket_edges) if step >= e)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        tensors = {k: getattr(self, k) for k in ("bin_edges", "concept_sums", "concept_counts", "frequency", "histogram", "top_values", "top_item", "top_step", "top_pos", "top_maps")}
        save_safetensors(tensors, folder / "stats.safetensors")
        meta = {k: getattr(self, k) for k in ("concepts", "concept_kinds", "timesteps", "items", "height", "width", "bucket_edges", "guidance")}
        write_json(folder / "stats.json", meta)

    @classmethod
    def load(cls, folder: str | Path) -> "FeatureStats":
        folder = Path(folder)
        meta_path = folder / "stats.json"
        if not meta_path.is_file():
            raise SaeuronError(f"{folder} holds no feature statistics (no stats.json)")
        meta = json.loads(meta_path.read_text())
        tensors = load_safetensors(folder / "stats.safetensors")
        for key in ("concepts", "concept_kinds", "timesteps", "bucket_edges"):
            meta[key] = tuple(meta[key])
        return cls(**meta, **tensors)


def _concept_table(store: ActivationStore) -> tuple[list[str], list[str], list[list[int]]]:
    """Concept names sorted by (kind, name), their kinds, and each item's concept indices."""
    pairs = sorted({(kind, name) for it in store.items for kind, name in it.labels.items()})
    names, kinds = [n for _, n in pairs], [k for k, _ in pairs]
    index = {n: i for i, n in enumerate(names)}
    return names, kinds, [[index[n] for n in it.labels.values()] for it in store.items]


def _update_top(top_values, top_key, top_maps, map_max, vals, idx, items, steps, step_bucket):
    """Merge one batch of maps into the running per-(latent, bucket) top-M entries."""
    m_top = top_values.shape[-1]
    buckets = step_bucket[steps]
    for b in buckets.unique().tolist():
        rows = (buckets == b).nonzero().squeeze(1)
        cand = map_max[rows].T  # [n, m_b]
        merged = torch.cat([top_values[:, b], cand], dim=1)
        best, order = merged.topk(m_top, dim=1)
        keys = torch.cat([top_key[:, b], torch.stack([items[rows], steps[rows], torch.zeros_like(rows)], 1).expand(cand.shape[0], -1, -1)], dim=1)
        new_keys = keys.gather(1, order[..., None].expand(-1, -1, 3))
        maps = torch.cat([top_maps[:, b], torch.zeros(cand.shape[0], cand.shape[1], top_maps.shape[-1], dtype=top_maps.dtype)], dim=1)
        new_maps = maps.gather(1, order[..., None].expand(-1, -1, top_maps.shape[-1]))
        # activation maps (and the peak position) only for the entries this batch contributed
        lat, slot = (order >= m_top).nonzero(as_tuple=True)
        if len(lat):
            j = rows[order[lat, slot] - m_top]
            amap = (vals[j] * (idx[j] == lat[:, None, None])).sum(-1)  # [S, hw]
            new_maps[lat, slot] = amap.to(top_maps.dtype)
            new_keys[lat, slot, 2] = amap.argmax(-1)
        empty = best <= 0
        new_keys[empty] = -1
        top_values[:, b], top_key[:, b], top_maps[:, b] = best.clamp(min=0), new_keys, new_maps


#: Histogram bin edges in absolute activation units, log-spaced: wide enough for SD and MiniCanvas.
HIST_EDGES = torch.logspace(-3, 3, 33)


@torch.inference_mode()
def compute_stats(store: ActivationStore, point: str, sae, top_m: int = 8, n_buckets: int = 4, batch_maps: int = 256) -> FeatureStats:
    """One streaming pass over ``store`` at ``point`` through ``sae``; see the module docstring."""
    if not store.completed:
        raise SaeuronError(f"the store at {store.root} has no completed shards")
    dims = store.meta["points"].get(point)
    if dims is None:
        raise SaeuronError(f"hook point {point!r} is not in the store; it holds {', '.join(store.points)}")
    h, w, c = dims["height"], dims["width"], dims["channels"]
    if c != sae.cfg.d_in:
        raise SaeuronError(f"SAE d_in {sae.cfg.d_in} does not match hook point {point} with {c} channels")
    n, hw, n_steps = sae.num_latents, h * w, store.meta["steps"]
    concepts, kinds, item_concepts = _concept_table(store)
    edges = tuple(round(i * n_steps / n_buckets) for i in range(n_buckets))
    step_bucket = torch.tensor([max(i for i, e in enumerate(edges) if s >= e) for s in range(n_steps)])
    membership = torch.zeros(len(store.items), len(concepts))  # item -> concepts (0/1)
    for i, cis in enumerate(item_concepts):
        membership[i, cis] = 1.0

    concept_sums = torch.zeros(len(concepts), n_steps, n)
    active = torch.zeros(n, dtype=torch.long)
    n_bins = len(HIST_EDGES) - 1
    histogram = torch.zeros(n * n_bins, dtype=torch.int32)
    tokens = 0
    top_values = torch.zeros(n, n_buckets, top_m)
    top_key = torch.full((n, n_buckets, top_m, 3), -1, dtype=torch.long)
    top_maps = torch.zeros(n, n_buckets, top_m, hw, dtype=torch.float16)

    for data in tqdm(store.iter_shards(point), total=len(store.completed), desc=f"stats {point}", mininterval=5):
        acts, items, steps = data["acts"], data["item"].long(), data["step"].long()
        for i in range(0, len(acts), batch_maps):
            x = acts[i : i + batch_maps].float()  # [m, hw, c]
            m = x.shape[0]
            enc = sae.encode(x.reshape(-1, c))
            vals = enc.top_acts.reshape(m, hw, -1)
            idx = enc.top_indices.reshape(m, hw, -1)
            it, st = items[i : i + m], steps[i : i + m]
            # spatially averaged code of each map, added to each of its item's concepts at its step
            mean_code = torch.zeros(m, n).scatter_add_(1, idx.reshape(m, -1), vals.reshape(m, -1)) / hw
            for s_ in st.unique().tolist():
                sel = st == s_
                concept_sums[:, s_] += membership[it[sel]].T @ mean_code[sel]
            tokens += m * hw
            fired = vals > 0
            fired_idx, fired_vals = idx[fired], vals[fired]
            active.index_add_(0, fired_idx, torch.ones_like(fired_idx))
            bins = torch.bucketize(fired_vals, HIST_EDGES[1:-1])
            histogram.index_add_(0, fired_idx * n_bins + bins, torch.ones_like(fired_idx, dtype=torch.int32))
            map_max = torch.zeros(m, n).scatter_reduce_(1, idx.reshape(m, -1), vals.reshape(m, -1), "amax")
            _update_top(top_values, top_key, top_maps, map_max, vals, idx, it, st, step_bucket)
    done_items = [i for s in store.completed for i in store.shard_items(s)]
    return FeatureStats(
        concepts=tuple(concepts),
        concept_kinds=tuple(kinds),
        timesteps=tuple(store.meta["timesteps"]),
        items=store.meta["items"],
        height=h,
        width=w,
        bucket_edges=edges,
        guidance=float(store.meta["guidance"]),
        bin_edges=HIST_EDGES.clone(),
        concept_sums=concept_sums,
        concept_counts=membership[done_items].sum(0),
        frequency=active.float() / max(tokens, 1),
        histogram=histogram.view(n, n_bins),
        top_values=top_values,
        top_item=top_key[..., 0].int(),
        top_step=top_key[..., 1].int(),
        top_pos=top_key[..., 2].int(),
        top_maps=top_maps,
    )
