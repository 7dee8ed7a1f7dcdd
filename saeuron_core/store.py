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

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import SaeuronError
from .io import load_safetensors, save_safetensors, write_json

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
            raise SaeuronError(f"{path}: a CSV prompt file needs a 'prompt' column (it has {', '.join(columns) or 'none'})")
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
        labels = {str(k).strip(): str(v).strip() for k, v in row.items() if k is not None and v not in (None, "") and str(v).strip()}
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

    def iter_token_batches(self, point: str, batch_size: int, shuffle: bool = True, seed: int = 0, epochs: int = 1, shards_in_memory: int = 4) -> Iterator[torch.Tensor]:
        """float32 token batches [batch_size, C] for SAE training, streamed.

        Shuffling mixes tokens across ``shards_in_memory`` shards at a time: enough to break up
        single images and steps while keeping memory bounded.
        """
        gen = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            order = self.completed
            if shuffle:
                order = [order[i] for i in torch.randperm(len(order), generator=gen).tolist()]
            for g in range(0, len(order), shards_in_memory):
                group = order[g : g + shards_in_memory]
                tokens = torch.cat([s["acts"].reshape(-1, s["acts"].shape[-1]) for s in self.iter_shards(point, group)])
                if shuffle:
                    tokens = tokens[torch.randperm(len(tokens), generator=gen)]
                for i in range(0, len(tokens) - batch_size + 1, batch_size):
                    yield tokens[i : i + batch_size].float()

    def token_count(self, point: str) -> int:
        """Tokens stored at ``point`` in the completed shards."""
        self._check_point(point)
        p = self.meta["points"][point]
        items = sum(len(self.shard_items(s)) for s in self.completed)
        return items * self.meta["steps"] * p["height"] * p["width"]


def cache_activations(pipe, items: list[PromptItem], points: list[str], root: str | Path, steps: int, guidance: float, items_per_shard: int = 16, model_name: str = "") -> ActivationStore:
    """Generate every item, capturing the conditional CFG half of each hook point at every step.

    Resumes a store with the same plan; refuses a folder that holds a different plan.
    """
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
    manifest = root / MANIFEST
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        same = all(old.get(k) == plan[k] for k in ("items", "steps", "guidance", "items_per_shard")) and set(old["hook_points"]) == set(points)
        # stores written before sizes were recorded resume at whatever size they were started
        same = same and all(old.get(k, plan[k]) == plan[k] for k in ("height", "width"))
        if not same:
            raise SaeuronError(f"{root} holds a store with a different plan (prompts, steps, guidance, size or hook points); use another folder")
        plan = old
    else:
        plan["completed_shards"] = []
        plan["timesteps"] = []
        write_json(manifest, plan)
    store = ActivationStore(root)
    todo = [s for s in range(store.n_shards) if s not in set(store.completed)]
    for shard in tqdm(todo, desc="cache", mininterval=5):
        ids = list(store.shard_items(shard))
        with capture_activations(pipe.unet, points, halves="cond", cfg=guidance > 1) as rec:
            generate_jobs(pipe, [(items[i].prompt, items[i].seed) for i in ids], steps, guidance, batch_size=len(ids), output_type="latent")
        for point in points:
            acts = rec.stacked(point)  # [T, B, C, H, W], steps in denoising order
            t_, b, c, h, w = acts.shape
            plan["points"][point] = {"channels": c, "height": h, "width": w}
            maps = acts.permute(1, 0, 3, 4, 2).reshape(b * t_, h * w, c).half()
            item = torch.tensor(ids).repeat_interleave(t_)
            step = torch.arange(t_).repeat(b)
            timestep = torch.tensor(rec.timesteps, dtype=torch.long).repeat(b)
            save_safetensors({"acts": maps, "item": item, "step": step, "timestep": timestep}, store.shard_path(point, shard))
        plan["timesteps"] = list(rec.timesteps)
        plan["completed_shards"] = sorted(set(plan["completed_shards"]) | {shard})
        write_json(manifest, plan)
    return ActivationStore(root)


def item_label_matrix(store: ActivationStore, key: str) -> tuple[list[str], np.ndarray]:
    """Concept names for label ``key`` and each item's index into them (-1 = unlabelled)."""
    names = sorted({it.labels[key] for it in store.items if key in it.labels})
    index = {n: i for i, n in enumerate(names)}
    return names, np.array([index.get(it.labels.get(key), -1) for it in store.items])
