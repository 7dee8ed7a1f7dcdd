"""On-disk activation store: block outputs per hook point, per image, per denoising step.

Layout of a store folder::

    store.json                      plan (items, points, steps, guidance) + completed shards
    <point>/shard-00000.safetensors acts [n_maps, H*W, C] fp16, item [n_maps], step [n_maps],
                                    timestep [n_maps] (one map = one image at one step)

Shards are written atomically (temp + rename) and only listed in ``store.json`` once every hook
point's shard is on disk, so a killed ``saeuron cache`` resumes at the first unlisted shard and
a reader never sees a partial one. Readers stream one shard at a time: memory stays bounded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from .errors import SaeuronError
from .io import load_safetensors, save_safetensors, write_json
from .pause import pause_point

MANIFEST = "store.json"


@dataclass(frozen=True)
class PromptItem:
    """One image to generate: its prompt, seed and concept labels (e.g. object / style)."""

    prompt: str
    seed: int
    labels: dict = field(default_factory=dict)


def read_prompt_file(path: str | Path) -> list[PromptItem]:
    """Prompts and their concepts from a file.

    - ``.txt``: one prompt per line (no concepts: statistics then have frequencies only).
    - ``.csv``: a ``prompt`` column, an optional ``seed`` column and any number of label columns;
      each label column's name is a concept kind (``object``, ``style``, ``artist``...) and its
      cells are concept names (an empty cell: no concept of that kind).
    - ``.json`` / ``.yaml``: a list of such rows (objects) or of prompt strings, or an object
      with that list under ``prompts``.

    Seeds default to the row index.
    """
    path = Path(path)
    if not path.is_file():
        raise SaeuronError(f"no such prompt file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        import csv

        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
        if "prompt" not in columns:
            raise SaeuronError(
                f"{path}: a CSV prompt file needs a 'prompt' column (it has {', '.join(columns) or 'none'})"
            )
    elif suffix in (".json", ".yaml", ".yml"):
        rows = _structured_rows(path)
    else:
        # a line's seed is its line number, so editing one line does not reseed the others
        rows = [{"prompt": line, "seed": i} for i, line in enumerate(path.read_text().splitlines()) if line.strip()]
    items = []
    for i, row in enumerate(rows):
        row = dict(row)
        text = str(row.pop("prompt", "") or "").strip()
        seed_text = row.pop("seed", None)
        try:
            seed = i if seed_text in (None, "") else int(seed_text)
        except (TypeError, ValueError):
            raise SaeuronError(f"{path}: row {i + 1} has seed {seed_text!r}, not an integer") from None
        if seed < 0:
            raise SaeuronError(f"{path}: row {i + 1} has a negative seed {seed}")
        labels = {
            str(k).strip(): str(v).strip()
            for k, v in row.items()
            if k is not None and v not in (None, "") and str(v).strip()
        }
        items.append(PromptItem(text, seed, labels))
    if not items:
        raise SaeuronError(f"{path} holds no prompts")
    if any(not it.prompt for it in items):
        raise SaeuronError(f"{path} has an empty prompt")
    return items


def _structured_rows(path: Path) -> list[dict]:
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # json and yaml raise several types; all mean "not readable"
        raise SaeuronError(f"{path} is not valid {path.suffix[1:].upper()} ({str(e).splitlines()[0]})") from None
    if isinstance(data, dict):
        data = data.get("prompts")
    if not isinstance(data, list):
        raise SaeuronError(f"{path}: expected a list of rows (or {{'prompts': [...]}})")
    rows = []
    for i, row in enumerate(data):
        if isinstance(row, str):
            row = {"prompt": row}
        if not isinstance(row, dict) or "prompt" not in row:
            raise SaeuronError(f"{path}: row {i + 1} has no 'prompt'")
        rows.append(row)
    return rows


class ActivationStore:
    """Read side of a store folder (and the bookkeeping the writer shares)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            raise SaeuronError(f"{self.root} is not an activation store (no {MANIFEST})")
        self.meta = json.loads(manifest.read_text())
        self.items = [PromptItem(**it) for it in self.meta["items"]]

    @property
    def points(self) -> list[str]:
        return list(self.meta["points"])

    @property
    def completed(self) -> list[int]:
        return sorted(self.meta["completed_shards"])

    @property
    def n_shards(self) -> int:
        return -(-len(self.items) // self.meta["items_per_shard"])

    @property
    def is_complete(self) -> bool:
        return len(self.completed) == self.n_shards

    def shard_path(self, point: str, shard: int) -> Path:
        return self.root / point / f"shard-{shard:05d}.safetensors"

    def shard_items(self, shard: int) -> range:
        n = self.meta["items_per_shard"]
        return range(shard * n, min((shard + 1) * n, len(self.items)))

    def _check_point(self, point: str) -> None:
        if point not in self.meta["points"]:
            raise SaeuronError(f"hook point {point!r} is not in this store; it holds {', '.join(self.points)}")

    def iter_shards(self, point: str, shards: list[int] | None = None) -> Iterator[dict]:
        """Completed shards one at a time: {"acts", "item", "step", "timestep"}."""
        self._check_point(point)
        for shard in shards if shards is not None else self.completed:
            yield load_safetensors(self.shard_path(point, shard))

    def iter_token_batches(
        self,
        point: str,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        epochs: int = 1,
        shards_in_memory: int = 4,
        start: int = 0,
    ) -> Iterator[torch.Tensor]:
        """float32 token batches [batch_size, C] for SAE training, streamed.

        Shuffling mixes tokens across ``shards_in_memory`` shards at a time: enough to break up
        single images and steps while keeping memory bounded. Tokens left over at the end of such a
        group (fewer than a batch) are dropped.

        ``start``: skip the first ``start`` batches of the stream (a resumed run). Groups wholly
        before it are not read: their token counts come from the manifest, and the shuffle
        generator is advanced exactly as reading them would have, so the batches from ``start``
        on are the same as those of an uninterrupted stream.
        """
        self._check_point(point)
        gen = torch.Generator().manual_seed(seed)
        skip = start
        for epoch in range(epochs):
            order = self.completed
            if shuffle:
                order = [order[i] for i in torch.randperm(len(order), generator=gen).tolist()]
            for g in range(0, len(order), shards_in_memory):
                group = order[g : g + shards_in_memory]
                n_tokens = sum(self.shard_token_count(point, s) for s in group)
                n_batches = n_tokens // batch_size
                if skip >= n_batches:
                    if shuffle:
                        torch.randperm(n_tokens, generator=gen)  # the draw reading the group would make
                    skip -= n_batches
                    continue
                tokens = torch.cat([s["acts"].reshape(-1, s["acts"].shape[-1]) for s in self.iter_shards(point, group)])
                if len(tokens) != n_tokens:
                    raise SaeuronError(
                        f"{self.root}: shards {group} at {point} hold {len(tokens)} tokens, the manifest says "
                        f"{n_tokens}"
                    )
                if shuffle:
                    tokens = tokens[torch.randperm(len(tokens), generator=gen)]
                for i in range(skip * batch_size, n_batches * batch_size, batch_size):
                    yield tokens[i : i + batch_size].float()
                skip = 0

    def shard_token_count(self, point: str, shard: int) -> int:
        """Tokens in one shard at ``point``, from the manifest (the shard is not read)."""
        p = self.meta["points"][point]
        return len(self.shard_items(shard)) * self.meta["steps"] * p["height"] * p["width"]

    def token_count(self, point: str) -> int:
        """Tokens stored at ``point`` in the completed shards."""
        self._check_point(point)
        return sum(self.shard_token_count(point, s) for s in self.completed)


def cache_activations(
    pipe,
    items: list[PromptItem],
    points: list[str],
    root: str | Path,
    steps: int,
    guidance: float,
    items_per_shard: int = 16,
    model_name: str = "",
    log=print,
) -> ActivationStore:
    """Generate every item, capturing the conditional CFG half of each hook point at every step.

    Resumes a store with the same plan; refuses a folder that holds a different plan (other
    prompts, steps, guidance, shard size, hook points or model).

    Under torchrun (``distributed.session()`` active) the shards are split round-robin over the
    ranks (shard s goes to rank s mod world); each rank writes its own shards' files and then a
    completion marker ``.parts/shard-NNNNN.json``; only rank 0 writes ``store.json``, folding in
    the markers, so the manifest lists a shard only once all its files are on disk. A rank with no
    shard (world size > number of shards) idles and says so. Rerunning after any rank was killed
    resumes at the shards without a marker, with any world size (also 1).
    """
    from . import distributed as dist
    from .hooks import capture_activations
    from .pipeline import generate_jobs

    if not items:
        raise SaeuronError("no prompts to cache")
    if items_per_shard < 1:
        raise SaeuronError(f"items_per_shard must be >= 1, got {items_per_shard}")
    from .hooks import normalize_point, resolve_point
    from .pipeline import image_size

    points = [normalize_point(p) for p in points]
    for point in points:
        resolve_point(pipe.unet, point)
    height, width = image_size(pipe)
    root = Path(root)
    plan = {
        "height": height,
        "width": width,
        "model": model_name,
        "hook_points": list(points),
        "points": {},  # shapes per point, filled in by the first shard
        "items": [asdict(it) for it in items],
        "steps": steps,
        "guidance": guidance,
        "items_per_shard": items_per_shard,
        "dtype": "float16",
    }
    dist.agree(
        {k: plan[k] for k in ("model", "items", "steps", "guidance", "items_per_shard", "height", "width")}
        | {"hook_points": sorted(points)},
        "the cache plan",
    )
    manifest = root / MANIFEST
    old = json.loads(manifest.read_text()) if manifest.is_file() else None
    dist.raise_together(_plan_mismatch(old, plan, root) if old is not None else None)
    if dist.is_main():
        if old is None:
            write_json(manifest, {**plan, "completed_shards": [], "timesteps": []})
        _fold_markers(root)  # shards finished by ranks of an earlier, killed run
    dist.barrier()
    store = ActivationStore(root)
    plan = store.meta
    mine = dist.split(store.n_shards)
    if not mine:
        log(
            f"cache: rank {dist.rank()} of {dist.world()} has no shard to write (the store has {store.n_shards} "
            "shards; use a smaller --items-per-shard to use every rank); it idles"
        )
    todo = [s for s in mine if s not in set(store.completed)]
    desc = "cache" if dist.world() == 1 else f"cache rank {dist.rank()}"
    for done, shard in enumerate(tqdm(todo, desc=desc, mininterval=5), start=1):
        ids = list(store.shard_items(shard))
        with capture_activations(pipe.unet, points, halves="cond", cfg=guidance > 1, scheduler=pipe.scheduler) as rec:
            generate_jobs(
                pipe,
                [(items[i].prompt, items[i].seed) for i in ids],
                steps,
                guidance,
                batch_size=len(ids),
                output_type="latent",
            )
        dims = {}
        for point in points:
            acts = rec.stacked(point)  # [T, B, C, H, W], steps in denoising order
            t_, b, c, h, w = acts.shape
            dims[point] = {"channels": c, "height": h, "width": w}
            maps = acts.permute(1, 0, 3, 4, 2).reshape(b * t_, h * w, c).half()
            item = torch.tensor(ids).repeat_interleave(t_)
            step = torch.arange(t_).repeat(b)
            timestep = torch.tensor(rec.timesteps, dtype=torch.long).repeat(b)
            save_safetensors(
                {"acts": maps, "item": item, "step": step, "timestep": timestep}, store.shard_path(point, shard)
            )
        if dist.world() == 1:
            plan["points"].update(dims)
            plan["timesteps"] = list(rec.timesteps)
            plan["completed_shards"] = sorted(set(plan["completed_shards"]) | {shard})
            write_json(manifest, plan)
        else:
            # every point's file is on disk: now the shard may be listed
            write_json(_marker(root, shard), {"shard": shard, "points": dims, "timesteps": list(rec.timesteps)})
            if dist.is_main():
                _fold_markers(root)
        pause_point(done, "shards")  # kill / resume tests stop here (saeuron_core.pause)
    dist.barrier()
    if dist.is_main():
        _fold_markers(root)
    dist.barrier()
    return ActivationStore(root)


PARTS = ".parts"


def _marker(root: Path, shard: int) -> Path:
    return root / PARTS / f"shard-{shard:05d}.json"


def _plan_mismatch(old: dict, plan: dict, root: Path) -> str | None:
    """Why a store folder's plan cannot be continued with ``plan`` (None: it can)."""
    if old.get("model") and plan["model"] and old["model"] != plan["model"]:
        return f"{root} holds a store written with model {old['model']!r}, not {plan['model']!r}; use another folder"
    if set(old["hook_points"]) != set(plan["hook_points"]):
        return (
            f"{root} holds a store of hook points {', '.join(sorted(old['hook_points']))}, not "
            f"{', '.join(sorted(plan['hook_points']))}; use another folder"
        )
    if not all(old.get(k) == plan[k] for k in ("items", "steps", "guidance", "items_per_shard")):
        return f"{root} holds a store with a different plan (prompts, steps or guidance); use another folder"
    # stores written before sizes were recorded resume at whatever size they were started
    if not all(old.get(k, plan[k]) == plan[k] for k in ("height", "width")):
        return (
            f"{root} holds a store generated at {old['height']}x{old['width']} px, not "
            f"{plan['height']}x{plan['width']}; use another folder"
        )
    return None


def _fold_markers(root: Path) -> None:
    """List in ``store.json`` every shard whose completion marker is on disk (rank 0 only: the
    single writer of the manifest), then remove those markers."""
    markers = sorted((root / PARTS).glob("shard-*.json"))
    if not markers:
        return
    manifest = root / MANIFEST
    plan = json.loads(manifest.read_text())
    done = set(plan["completed_shards"])
    for path in markers:
        rec = json.loads(path.read_text())
        if set(rec["points"]) != set(plan["hook_points"]):
            raise SaeuronError(
                f"{path} records hook points {', '.join(sorted(rec['points']))}, but the store holds "
                f"{', '.join(sorted(plan['hook_points']))}; remove {root / PARTS}"
            )
        for point, dims in rec["points"].items():
            if plan["points"].get(point, dims) != dims:
                raise SaeuronError(
                    f"{path}: hook point {point} has shape {dims} there but {plan['points'][point]} in the store; "
                    "stores of different models cannot be mixed"
                )
        if plan["timesteps"] and rec["timesteps"] != plan["timesteps"]:
            raise SaeuronError(
                f"{path} was generated with timesteps {rec['timesteps']}, the store with {plan['timesteps']}; stores "
                "of different schedulers cannot be mixed"
            )
        plan["points"].update(rec["points"])
        plan["timesteps"] = rec["timesteps"]
        done.add(rec["shard"])
    plan["completed_shards"] = sorted(done)
    write_json(manifest, plan)
    for path in markers:  # after the manifest: a kill in between only folds them again
        path.unlink(missing_ok=True)
