"""Feature statistics of one SAE on one activation store, computed once and stored compactly
(the stored form, ``FeatureStats``, and how it is read are in ``feature_stats``).

From the SAE's sparse codes (top-k values + indices per token, never dense [n_latents] arrays
per token) this builds, in one streaming pass over the store with bounded memory:

- ``concept_sums [n_concepts, T, n_latents]`` and ``concept_counts [n_concepts]``: per concept
  and step, the sum of spatially averaged codes (the input of the importance score). A plain
  prompt list has no concepts: these are then empty ([0, T, n]) and everything else still works;
- ``frequency [n_latents]``: fraction of tokens where each latent is active;
- ``histogram [n_latents, n_bins]``: counts of nonzero activations in log-spaced bins;
- per latent, its top-M **diverse** examples: at most one per image (or, with
  ``distinct="prompt"``, per prompt), each at the step and token where the latent peaks on that
  image, with its activation map quantised to 4 bits per token (see ``feature_stats``);
- optionally (``add_thumbnails``) a small JPEG / PNG thumbnail of every image that appears among
  the examples, so a feature card never regenerates an image.

Saved as one ``stats.safetensors`` + ``stats.json`` (concepts, items, timesteps).

Devices: the encoding, sums, histograms and example tables live on ``compute_stats``' device
(the SAE's unless named; under torchrun each rank's own GPU), the store's slices stream there one
ahead (``device.prefetch_to``), and only ``finish`` brings the result to the CPU. The operations
are the same on every device, so the CPU result is the one of before, and shards merge exactly.

Thumbnails come from generating each needed (prompt, seed) once, in batches, after the
statistics are computed: the store keeps block activations only (``cache`` generates with
``output_type="latent"``), stats already knows which images any card can show (often far fewer
than the store's), and the cost is one more pass of plain generation over those images only,
paid once at build time rather than on every first card open.
"""

from __future__ import annotations

import contextlib

import torch
from tqdm.auto import tqdm

from . import distributed as dist
from .device import prefetch_to, process_device
from .errors import SaeuronError
from .feature_stats import MAP_LEVELS, Example, FeatureStats, encode_thumbnail, pack_levels, unpack_levels
from .store import ActivationStore

__all__ = [
    "HIST_EDGES",
    "ENCODE_BYTES",
    "StatsBuilder",
    "compute_stats",
    "add_thumbnails",
    "FeatureStats",
    "Example",
    "MAP_LEVELS",
    "pack_levels",
    "unpack_levels",
    "encode_thumbnail",
]

#: Histogram bin edges in absolute activation units, log-spaced: wide enough for SD and MiniCanvas.
HIST_EDGES = torch.logspace(-3, 3, 33)

#: Dense pre-activations the SAE encoder may hold at once (bytes): bounds ``saeuron stats``' memory
#: at 20480 latents (about 3000 tokens per encoder call).
ENCODE_BYTES = 256 * 2**20


def _concept_table(store: ActivationStore) -> tuple[list[str], list[str], list[list[int]]]:
    """Concept names sorted by (kind, name), their kinds, and each item's concept indices."""
    pairs = sorted({(kind, name) for it in store.items for kind, name in it.labels.items()})
    names, kinds = [n for _, n in pairs], [k for k, _ in pairs]
    index = {n: i for i, n in enumerate(names)}
    return names, kinds, [[index[n] for n in it.labels.values()] for it in store.items]


class StatsBuilder:
    """Streaming accumulator: feed sparse codes of whole maps with ``add``, then ``finish``.

    Memory: concept sums [C, T, n] float32, the running examples (their maps fp16
    [n, M, H*W]) and per call O(maps x n) dense reductions; nothing grows with the store. All of
    it lives on ``device``; codes given to ``add`` are moved there.
    """

    def __init__(
        self,
        n_latents: int,
        height: int,
        width: int,
        n_steps: int,
        item_concepts: list[list[int]],
        n_concepts: int,
        item_groups: list[int],
        top_m: int = 8,
        device: str | torch.device = "cpu",
    ):
        if top_m < 1:
            raise SaeuronError(f"top_m must be >= 1, got {top_m}")
        n, hw = n_latents, height * width
        self.n, self.hw, self.top_m = n, hw, top_m
        self.device = dev = torch.device(device)
        membership = torch.zeros(len(item_concepts), n_concepts)  # item -> concepts (0/1)
        for i, cis in enumerate(item_concepts):
            membership[i, cis] = 1.0
        self.membership = membership.to(dev)
        self.group_of_item = torch.tensor(item_groups, dtype=torch.long, device=dev)
        self.edges = HIST_EDGES.to(dev)
        self.concept_sums = torch.zeros(n_concepts, n_steps, n, device=dev)
        self.active = torch.zeros(n, dtype=torch.long, device=dev)
        self.n_bins = len(HIST_EDGES) - 1
        self.histogram = torch.zeros(n * self.n_bins, dtype=torch.int32, device=dev)
        self.tokens = 0
        # running examples, unsorted slots; value -1 marks an empty slot
        self.value = torch.full((n, top_m), -1.0, device=dev)
        self.group = torch.full((n, top_m), -1, dtype=torch.long, device=dev)
        self.item = torch.full((n, top_m), -1, dtype=torch.long, device=dev)
        self.step = torch.zeros(n, top_m, dtype=torch.long, device=dev)
        self.pos = torch.zeros(n, top_m, dtype=torch.long, device=dev)
        self.maps = torch.zeros(n, top_m, hw, dtype=torch.float16, device=dev)
        self.height, self.width = height, width

    @torch.inference_mode()
    def add(self, vals: torch.Tensor, idx: torch.Tensor, items: torch.Tensor, steps: torch.Tensor) -> None:
        """Codes of ``m`` whole maps: vals / idx [m, H*W, k] (ReLU'd values, latent ids), and each
        map's item and step [m]."""
        m, hw = vals.shape[:2]
        n = self.n
        dev = self.device
        vals, idx, items, steps = (
            vals.to(dev, torch.float32),
            idx.to(dev, torch.long),
            items.to(dev, torch.long),
            steps.to(dev, torch.long),
        )
        flat_idx, flat_vals = idx.reshape(m, -1), vals.reshape(m, -1)
        # spatially averaged code of each map, added to each of its item's concepts at its step
        if self.membership.shape[1]:
            mean_code = torch.zeros(m, n, device=dev).scatter_add_(1, flat_idx, flat_vals) / hw
            for s_ in steps.unique().tolist():
                sel = steps == s_
                self.concept_sums[:, s_] += self.membership[items[sel]].T @ mean_code[sel]
        self.tokens += m * hw
        fired = vals > 0
        fired_idx, fired_vals = idx[fired], vals[fired]
        self.active.index_add_(0, fired_idx, torch.ones_like(fired_idx))
        bins = torch.bucketize(fired_vals, self.edges[1:-1])
        self.histogram.index_add_(0, fired_idx * self.n_bins + bins, torch.ones_like(fired_idx, dtype=torch.int32))
        map_max = torch.zeros(m, n, device=dev).scatter_reduce_(1, flat_idx, flat_vals, "amax")
        self._merge_examples(map_max, vals, idx, items, steps)

    def _merge_examples(self, map_max, vals, idx, items, steps) -> None:
        m, n, top_m, dev = map_max.shape[0], self.n, self.top_m, self.device
        groups = self.group_of_item[items]
        uniq, inv = groups.unique(return_inverse=True)  # diversity groups in this batch
        u = len(uniq)
        g_max = torch.zeros(u, n, device=dev).scatter_reduce_(0, inv[:, None].expand(-1, n), map_max, "amax")
        # the map where each (group, latent) peaks: the first map that reaches the group's max
        is_peak = map_max == g_max[inv]
        map_ids = torch.where(is_peak, torch.arange(m, device=dev)[:, None], m)
        peak_map = torch.full((u, n), m, dtype=torch.long, device=dev).scatter_reduce_(
            0, inv[:, None].expand(-1, n), map_ids, "amin"
        )
        cand_val, cand_u = g_max.T.topk(min(top_m, u), dim=1)  # [n, M']
        cand_group = uniq[cand_u]
        cand_map = peak_map.T.gather(1, cand_u)
        cand_val = torch.where(cand_val > 0, cand_val, torch.full_like(cand_val, -2.0))
        # a group already held: keep whichever entry is larger
        same = (self.group[:, :, None] == cand_group[:, None, :]) & (self.group[:, :, None] >= 0)
        cand_wins = same & (cand_val[:, None, :] > self.value[:, :, None])
        old_value = torch.where(cand_wins.any(2), torch.full_like(self.value, -3.0), self.value)
        cand_val = torch.where((same & ~cand_wins).any(1), torch.full_like(cand_val, -2.0), cand_val)
        merged = torch.cat([old_value, cand_val], 1)
        chosen = torch.zeros_like(merged, dtype=torch.bool).scatter_(1, merged.topk(top_m, dim=1).indices, True)
        freed = ~chosen[:, :top_m]
        entering = chosen[:, top_m:]
        rows_f, slots_f = freed.nonzero(as_tuple=True)
        rows_n, cands_n = entering.nonzero(as_tuple=True)  # row-major like rows_f, same count per row
        if len(rows_n) == 0:
            return
        value = cand_val[rows_n, cands_n]
        empty = value <= 0  # only when a freed slot is taken by nothing real
        j = cand_map[rows_n, cands_n].clamp(max=m - 1)
        # activation maps of the entering entries, one dense [hw, n] map at a time (bounded memory)
        amap = torch.zeros(len(j), self.hw, device=dev)
        for jj in j.unique().tolist():
            sel = (j == jj).nonzero().squeeze(1)
            dense = torch.zeros(self.hw, n, device=dev).scatter_(1, idx[jj], vals[jj])
            amap[sel] = dense[:, rows_n[sel]].T
        self.value[rows_f, slots_f] = torch.where(empty, torch.full_like(value, -1.0), value)
        self.group[rows_f, slots_f] = torch.where(empty, -1, cand_group[rows_n, cands_n])
        self.item[rows_f, slots_f] = torch.where(empty, -1, items[j])
        self.step[rows_f, slots_f] = steps[j]
        self.pos[rows_f, slots_f] = amap.argmax(-1)
        self.maps[rows_f, slots_f] = amap.to(torch.float16)

    _EXAMPLE_FIELDS = ("value", "group", "item", "step", "pos", "maps")

    @torch.inference_mode()
    def merge(self, others: list["StatsBuilder"]) -> None:
        """Fold in builders that saw other maps of the same store (other ranks' shards), exactly:
        sums and counts add up, and each latent keeps the top-M of the union of the example
        tables, one per diversity group (its largest; on a tie the smaller item, i.e. the earlier
        shard, as one process streaming the shards in order keeps)."""
        for o in others:
            self.concept_sums += o.concept_sums.to(self.device)
            self.active += o.active.to(self.device)
            self.histogram += o.histogram.to(self.device)
            self.tokens += o.tokens
        self._merge_tables([{f: getattr(b, f).to(self.device) for f in self._EXAMPLE_FIELDS} for b in [self, *others]])

    @torch.inference_mode()
    def merge_across_ranks(self) -> None:
        """``merge`` with every other rank's builder (under torchrun); every rank ends up with the
        merged statistics. A no-op in one process."""
        if not dist.active():
            return
        for name in ("concept_sums", "active", "histogram"):
            setattr(self, name, dist.all_reduce(getattr(self, name)))
        self.tokens = int(dist.all_reduce(torch.tensor([self.tokens], dtype=torch.long)).item())
        gathered = {f: dist.all_gather(getattr(self, f)) for f in self._EXAMPLE_FIELDS}
        self._merge_tables([{f: gathered[f][r] for f in self._EXAMPLE_FIELDS} for r in range(dist.world())])

    def _merge_tables(self, tables: list[dict]) -> None:
        cat = {f: torch.cat([t[f] for t in tables], 1) for f in self._EXAMPLE_FIELDS}  # [n, R*M, ...]
        value, group, item = cat["value"], cat["group"], cat["item"]
        valid = (group >= 0) & (value > 0)
        same = (group[:, :, None] == group[:, None, :]) & valid[:, :, None] & valid[:, None, :]
        wins = (value[:, :, None] > value[:, None, :]) | (
            (value[:, :, None] == value[:, None, :]) & (item[:, :, None] < item[:, None, :])
        )
        beaten = (same & wins).any(1)  # [n, R*M]: another entry of its group is preferred
        ranked = torch.where(valid & ~beaten, value, torch.full_like(value, -1.0))
        keep = ranked.topk(self.top_m, dim=1).indices
        kept_valid = ranked.gather(1, keep) > 0
        for f in self._EXAMPLE_FIELDS:
            t = cat[f]
            picked = t.gather(1, keep[..., None].expand(-1, -1, t.shape[-1])) if t.dim() == 3 else t.gather(1, keep)
            if f in ("value", "group", "item"):
                picked = torch.where(kept_valid, picked, torch.full_like(picked, -1))
            setattr(self, f, picked.contiguous())

    def finish(self, **meta) -> FeatureStats:
        """The statistics, on the CPU; ``meta``: concepts, concept_kinds, timesteps, items, guidance,
        distinct, concept_counts."""
        order = self.value.argsort(1, descending=True)
        value = self.value.gather(1, order)
        empty = value <= 0
        item = self.item.gather(1, order).masked_fill(empty, -1)
        maps = self.maps.gather(1, order[..., None].expand(-1, -1, self.hw)).float()
        scale = (value.clamp(min=1e-30) / MAP_LEVELS)[..., None]
        levels = (maps / scale).round_().clamp_(0, MAP_LEVELS).to(torch.uint8).masked_fill_(empty[..., None], 0)
        del maps
        tensors = dict(
            concept_sums=self.concept_sums,
            frequency=self.active.float() / max(self.tokens, 1),
            histogram=self.histogram.view(self.n, self.n_bins),
            example_value=value.clamp(min=0),
            example_item=item.int(),
            example_step=self.step.gather(1, order).masked_fill(empty, 0).int(),
            example_pos=self.pos.gather(1, order).masked_fill(empty, 0).int(),
            example_map=pack_levels(levels),
        )
        if "concept_counts" in meta:
            meta["concept_counts"] = meta["concept_counts"].cpu()
        return FeatureStats(
            height=self.height,
            width=self.width,
            bin_edges=HIST_EDGES.clone(),
            **{k: t.cpu() for k, t in tensors.items()},
            **meta,
        )


def _maps_per_call(hw: int, n_latents: int, budget: int = ENCODE_BYTES) -> int:
    return max(1, budget // (hw * n_latents * 4))


@torch.inference_mode()
def compute_stats(
    store: ActivationStore,
    point: str,
    sae,
    top_m: int = 8,
    distinct: str = "image",
    batch_maps: int | None = None,
    shards: list[int] | None = None,
    data_parallel: bool = True,
    device: str | torch.device | None = None,
) -> FeatureStats:
    """One streaming pass over ``store`` at ``point`` through ``sae``; see the module docstring.

    ``device``: where the encoding and the statistics run (auto, cpu, cuda, cuda:N, mps; None:
    the SAE's device), resolved before the store is read; the SAE is used there (a moved copy if
    it lives elsewhere; ``sae`` itself is not moved).
    ``distinct``: diversity of the examples, at most one per ``image`` (prompt + seed) or per
    ``prompt``. ``batch_maps``: maps per encoder call (default: what fits ``ENCODE_BYTES``).
    ``shards``: only these completed shards (default all); under torchrun with ``data_parallel``
    each rank reads every world-th of them and the partial statistics are merged exactly
    (``StatsBuilder.merge_across_ranks``), so every rank returns the statistics of all of them.
    """
    from safetensors import safe_open

    device = sae.device if device is None else process_device(device)
    if distinct not in ("image", "prompt"):
        raise SaeuronError(f"distinct must be 'image' or 'prompt', got {distinct!r}")
    if top_m < 1:
        raise SaeuronError(f"top_m must be >= 1, got {top_m}")
    if not store.completed:
        raise SaeuronError(f"the store at {store.root} has no completed shards")
    dims = store.meta["points"].get(point)
    if dims is None:
        raise SaeuronError(f"hook point {point!r} is not in the store; it holds {', '.join(store.points)}")
    h, w, c = dims["height"], dims["width"], dims["channels"]
    if c != sae.cfg.d_in:
        raise SaeuronError(f"SAE d_in {sae.cfg.d_in} does not match hook point {point} with {c} channels")
    n, hw, n_steps = sae.num_latents, h * w, store.meta["steps"]
    batch_maps = batch_maps or _maps_per_call(hw, n)
    concepts, kinds, item_concepts = _concept_table(store)
    if distinct == "prompt":
        prompt_ids = {p: i for i, p in enumerate(dict.fromkeys(it.prompt for it in store.items))}
        groups = [prompt_ids[it.prompt] for it in store.items]
    else:
        groups = list(range(len(store.items)))
    sae = _sae_on(sae, device)
    builder = StatsBuilder(n, h, w, n_steps, item_concepts, len(concepts), groups, top_m, device=device)
    shards = store.completed if shards is None else sorted(shards)
    if unknown := set(shards) - set(store.completed):
        raise SaeuronError(f"shards {sorted(unknown)} are not completed shards of {store.root}")
    ddp = data_parallel and dist.active()
    mine = [shards[i] for i in dist.split(len(shards))] if ddp else shards

    def slices():
        for shard in tqdm(
            mine, desc=f"stats {point}" if not ddp else f"stats {point} rank {dist.rank()}", mininterval=5
        ):
            # read the shard a slice at a time: a paper-scale shard is ~0.5 GB of fp16 maps
            with safe_open(str(store.shard_path(point, shard)), framework="pt") as f:
                acts = f.get_slice("acts")
                items, steps = f.get_tensor("item").long(), f.get_tensor("step").long()
                for i in range(0, len(items), batch_maps):
                    yield (
                        acts[i : i + batch_maps],
                        items[i : i + batch_maps],
                        steps[i : i + batch_maps],
                    )  # [m, hw, c] as stored

    with contextlib.closing(prefetch_to(slices(), device)) as stream:
        for x, items, steps in stream:
            m = x.shape[0]
            enc = sae.encode(x.reshape(-1, c))  # in float32 on the device
            builder.add(enc.top_acts.reshape(m, hw, -1), enc.top_indices.reshape(m, hw, -1), items, steps)
    if ddp:
        builder.merge_across_ranks()
    done_items = [i for s in shards for i in store.shard_items(s)]
    return builder.finish(
        concepts=tuple(concepts),
        concept_kinds=tuple(kinds),
        timesteps=tuple(store.meta["timesteps"]),
        items=store.meta["items"],
        guidance=float(store.meta["guidance"]),
        distinct=distinct,
        concept_counts=builder.membership[done_items].sum(0),
    )


def _sae_on(sae, device: torch.device):
    """``sae`` if it is on ``device``, else a copy there (the caller's module is not moved)."""
    if sae.device == device:
        return sae
    moved = type(sae)(sae.cfg, device="meta")
    moved.load_state_dict(sae.state_dict(), assign=True)  # shares the tensors; ``to`` then copies
    return moved.to(device)


@torch.inference_mode()
def add_thumbnails(
    pipe, store: ActivationStore, stats: list[FeatureStats], max_side: int = 128, batch_size: int = 16
) -> int:
    """Generate every image that any of ``stats`` shows among its examples, once, in batches (the
    store's steps and guidance), and store its thumbnail in each. Returns the number generated.

    Under torchrun the images are split round-robin over the ranks and the thumbnails gathered:
    every image is still generated once, and every rank ends with all thumbnails.
    """
    from .pipeline import generate_jobs

    needed = sorted(set().union(*(st.needed_items() for st in stats)))
    images: dict[int, object] = {}
    steps, guidance = store.meta["steps"], float(store.meta["guidance"])
    mine = [needed[i] for i in dist.split(len(needed))]
    for i in tqdm(range(0, len(mine), batch_size), desc="thumbnails", mininterval=5):
        chunk = mine[i : i + batch_size]
        jobs = [(store.items[j].prompt, store.items[j].seed) for j in chunk]
        for j, image in zip(chunk, generate_jobs(pipe, jobs, steps, guidance, batch_size=batch_size)):
            image = image.convert("RGB")
            if max(image.size) > max_side:
                image.thumbnail((max_side, max_side))
            images[j] = image
    if dist.active():
        images = {j: im for part in dist.all_gather_object(images) for j, im in part.items()}
    for st in stats:
        st.set_thumbnails({j: images[j] for j in st.needed_items()}, max_side)
    return len(needed)
