"""Work-folder image sets of the benchmark: the protocol's prompts generated and judged once per
removal and base seed, kept as one .npz each so a stopped run resumes and processes share work."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..baselines.methods import Removal
from ..io import atomic_path, claim
from . import dataset as mc
from .evaluation import JudgedImage, judge_decorrelated


def protocol_prompts() -> list[tuple[str, str | None]]:
    """Every (object, style) pair, then every unstyled prompt (style None)."""
    return mc.all_pairs() + [(o, None) for o in mc.OBJECTS]


@dataclass
class ImageSet:
    records: list[JudgedImage]
    images: np.ndarray  # uint8 [N, H, W, 3]
    features: torch.Tensor  # judge penultimate features [N, D]
    seconds: float = 0.0

    def save(self, path: Path) -> None:
        """One .npz, written atomically (a work folder's finished piece)."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    images=self.images,
                    features=self.features.numpy(),
                    records=json.dumps([asdict(r) for r in self.records]),
                    seconds=self.seconds,
                )

    @classmethod
    def load(cls, path: Path) -> "ImageSet":
        z = np.load(path)
        records = [JudgedImage(**r) for r in json.loads(str(z["records"]))]
        return cls(records, z["images"], torch.from_numpy(z["features"]), float(z["seconds"]))

    @classmethod
    def concat(cls, parts: list["ImageSet"]) -> "ImageSet":
        """Image sets of several base seeds as one (records in seed order, the same for every set)."""
        return cls(
            [r for p in parts for r in p.records],
            np.concatenate([p.images for p in parts]),
            torch.cat([p.features for p in parts]),
            sum(p.seconds for p in parts),
        )


def generate_protocol(pipe, judge, seeds, steps: int, guidance: float, batch_size: int = 24) -> ImageSet:
    """Generate and judge the whole protocol once (under whatever hooks are active): every
    prompt at its own seeds derived from the base ``seeds``, so no two prompts share noise and
    every method sees the same noise per prompt."""
    t0 = time.perf_counter()
    records, feats, images = judge_decorrelated(pipe, judge, protocol_prompts(), seeds, steps, guidance, batch_size)
    return ImageSet(records, images, feats, time.perf_counter() - t0)


def stored_protocol(
    pipe, judge, path: Path | None, seed: int, steps: int, guidance: float, removal: Removal | None = None
) -> ImageSet | None:
    """The protocol at one base seed with ``removal`` active: from ``path`` if a run finished it,
    else generated here and saved there, unless another live process holds its claim (then None:
    the same command in several processes shares the work, one set at a time). ``path`` None:
    generated and not kept."""
    if path is not None and path.is_file():
        return ImageSet.load(path)
    with claim(path.with_suffix(".claim")) if path is not None else contextlib.nullcontext(True) as mine:
        if not mine:
            return None
        with removal.active(pipe) if removal is not None else contextlib.nullcontext():
            images = generate_protocol(pipe, judge, (seed,), steps, guidance)
        if path is not None:
            images.save(path)
    return images


def settings_key(method: str, concept_set: tuple[str, ...], settings: dict) -> str:
    """A work folder's name for one removal: method, concepts and a hash of its settings, so a
    changed tau / gamma or ESD budget never reuses images made with the old one."""
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True, default=str).encode(), digest_size=4).hexdigest()
    return f"{method}-{'+'.join(concept_set)}-{digest}"
