"""The stored feature statistics of one SAE at one hook point (``stats.safetensors`` + ``stats.json``)
and how they are read: ``FeatureStats``, its top ``Example``s with their 4-bit activation maps
(``pack_levels`` / ``unpack_levels``) and thumbnails. ``stats`` computes them.

Per latent, the top-M examples are **diverse** (at most one per image, or per prompt), each at the
step and token where the latent peaks on that image, with its activation map over the block's
grid quantised to 4 bits per token (16 levels of ``value / 15``, two tokens per byte: the peak is
exactly ``value``, any token within ``value / 30``). At 20480 latents x 8 examples x 16x16 maps
that is 21 MB instead of 84 MB in fp16: a heatmap needs no more, and the paper-size budget (50 MB
per hook point) needs it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import SaeuronError
from .io import load_safetensors, save_safetensors, write_json
from .scoring import ConceptStats

_TENSORS = (
    "bin_edges",
    "concept_sums",
    "concept_counts",
    "frequency",
    "histogram",
    "example_value",
    "example_item",
    "example_step",
    "example_pos",
    "example_map",
    "thumb_item",
    "thumb_offset",
    "thumb_data",
)
_META = ("concepts", "concept_kinds", "timesteps", "items", "height", "width", "guidance", "distinct")


@dataclass(frozen=True)
class Example:
    """One stored top example of a feature: where on which image it peaks, and how."""

    value: float
    """Peak activation of the feature on this image (over its steps and tokens)."""
    item: int
    """Index of the image in the store's item list."""
    prompt: str
    seed: int
    step: int
    """Denoising step (index) where the peak is."""
    timestep: int
    row: int
    """Token row of the peak on the block's grid."""
    col: int
    activation_map: np.ndarray
    """float32 [height, width]: the feature's activation over the grid at ``step`` (dequantised)."""


@dataclass
class FeatureStats:
    """Loaded statistics; tensors on CPU."""

    concepts: tuple[str, ...]
    concept_kinds: tuple[str, ...]
    timesteps: tuple[int, ...]
    items: list[dict]
    height: int
    width: int
    guidance: float
    """Guidance scale the store was generated with (to regenerate an item's image exactly)."""
    bin_edges: torch.Tensor
    concept_sums: torch.Tensor
    concept_counts: torch.Tensor
    frequency: torch.Tensor
    histogram: torch.Tensor
    example_value: torch.Tensor
    """[n_latents, M] float32, descending per row; 0 where a slot is empty."""
    example_item: torch.Tensor
    """[n_latents, M] int32 image index; -1 where empty."""
    example_step: torch.Tensor
    """[n_latents, M] int32 step of the peak."""
    example_pos: torch.Tensor
    """[n_latents, M] int32 token (row * width + col) of the peak."""
    example_map: torch.Tensor
    """[n_latents, M, ceil(height * width / 2)] uint8: the activation map in levels of value / 15,
    4 bits per token, token 2i in the low nibble of byte i and token 2i + 1 in the high one."""
    thumb_item: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int32))
    """[K] int32: images that have a thumbnail."""
    thumb_offset: torch.Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.int64))
    """[K + 1] int64: thumbnail i is ``thumb_data[thumb_offset[i]:thumb_offset[i + 1]]``."""
    thumb_data: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.uint8))
    """Encoded (PNG / JPEG) thumbnails, back to back."""
    distinct: str = "image"
    """Diversity rule of the examples: at most one per ``image`` or per ``prompt``."""
    _by_kind: dict = field(default_factory=dict, repr=False, compare=False)
    _thumb_index: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_latents(self) -> int:
        return self.frequency.shape[0]

    @property
    def top_m(self) -> int:
        return self.example_value.shape[1]

    def typical_top_activation(self, feature: int) -> float:
        """Median of the feature's stored top activations (0.0 when it never fired): the unit of
        steering strength, so that "1x" means "as strongly as where it usually fires most"."""
        values = self.example_value[feature].float()
        values = values[values > 0]
        return float(values.median()) if len(values) else 0.0

    def typical_top_activations(self) -> torch.Tensor:
        """[n_latents] ``typical_top_activation`` of every latent at once."""
        values = self.example_value.float()
        medians = torch.nanmedian(torch.where(values > 0, values, torch.nan), dim=1).values
        return torch.nan_to_num(medians, nan=0.0)

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
            raise SaeuronError(
                f"no concepts of kind {kind!r} in these statistics"
                if kind
                else "these statistics hold no concepts (computed over a plain prompt list)"
            )
        sums = self.concept_sums[keep]
        counts = self.concept_counts[keep]
        means = sums / counts.clamp(min=1)[:, None, None]
        return ConceptStats(
            means=means,
            counts=counts,
            concepts=tuple(self.concepts[i] for i in keep),
            timesteps=self.timesteps,
            typical_top=self.typical_top_activations(),
        )

    # ------------------------------------------------------------------ examples
    def examples(self, feature: int) -> list[Example]:
        """The feature's stored top examples, strongest first (no image is generated)."""
        out = []
        for slot in range(self.top_m):
            item = int(self.example_item[feature, slot])
            if item < 0:
                continue
            value = float(self.example_value[feature, slot])
            pos, step = int(self.example_pos[feature, slot]), int(self.example_step[feature, slot])
            amap = (
                unpack_levels(self.example_map[feature, slot], self.height * self.width)
                .float()
                .mul_(value / MAP_LEVELS)
                .reshape(self.height, self.width)
                .numpy()
            )
            row, col = divmod(pos, self.width)
            info = self.items[item]
            out.append(
                Example(value, item, info["prompt"], int(info["seed"]), step, int(self.timesteps[step]), row, col, amap)
            )
        return out

    def has_thumbnail(self, item: int) -> bool:
        return item in self._thumbs()

    def thumbnail(self, item: int):
        """The stored thumbnail of image ``item`` (PIL RGB), or None if none was stored."""
        from PIL import Image

        i = self._thumbs().get(item)
        if i is None:
            return None
        lo, hi = int(self.thumb_offset[i]), int(self.thumb_offset[i + 1])
        return Image.open(io.BytesIO(self.thumb_data[lo:hi].numpy().tobytes())).convert("RGB")

    def _thumbs(self) -> dict[int, int]:
        if len(self._thumb_index) != len(self.thumb_item):
            self._thumb_index.clear()
            self._thumb_index.update({int(it): i for i, it in enumerate(self.thumb_item.tolist())})
        return self._thumb_index

    def needed_items(self) -> list[int]:
        """Images that appear among the examples (the ones a card can show)."""
        return sorted(set(self.example_item[self.example_item >= 0].tolist()))

    def set_thumbnails(self, images: dict[int, object], max_side: int = 128) -> None:
        """Store ``images`` (item -> PIL image) as thumbnails of at most ``max_side`` pixels."""
        blobs = {item: encode_thumbnail(img, max_side) for item, img in sorted(images.items())}
        sizes = torch.tensor([len(b) for b in blobs.values()], dtype=torch.int64)
        self.thumb_item = torch.tensor(list(blobs), dtype=torch.int32)
        self.thumb_offset = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
        self.thumb_data = (
            torch.frombuffer(bytearray(b"".join(blobs.values())), dtype=torch.uint8)
            if blobs
            else torch.zeros(0, dtype=torch.uint8)
        )
        self._thumb_index.clear()

    # ------------------------------------------------------------------ disk
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        save_safetensors({k: getattr(self, k).contiguous() for k in _TENSORS}, folder / "stats.safetensors")
        write_json(folder / "stats.json", {k: getattr(self, k) for k in _META})

    @classmethod
    def load(cls, folder: str | Path) -> "FeatureStats":
        folder = Path(folder)
        meta_path = folder / "stats.json"
        if not meta_path.is_file():
            raise SaeuronError(f"{folder} holds no feature statistics (no stats.json)")
        meta = json.loads(meta_path.read_text())
        if "bucket_edges" in meta:
            raise SaeuronError(
                f"{folder} holds statistics in the old format (per-bucket top patches); rerun `saeuron stats`"
            )
        tensors = load_safetensors(folder / "stats.safetensors")
        for key in ("concepts", "concept_kinds", "timesteps"):
            meta[key] = tuple(meta[key])
        return cls(**meta, **tensors)


#: Quantisation levels of the stored activation maps (4 bits).
MAP_LEVELS = 15


def pack_levels(levels: torch.Tensor) -> torch.Tensor:
    """uint8 [..., hw] levels in [0, 15] -> [..., ceil(hw / 2)] bytes, two tokens per byte."""
    if levels.shape[-1] % 2:
        levels = torch.cat([levels, torch.zeros_like(levels[..., :1])], -1)
    pairs = levels.reshape(*levels.shape[:-1], -1, 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack_levels(packed: torch.Tensor, hw: int) -> torch.Tensor:
    """Inverse of ``pack_levels``: [..., ceil(hw / 2)] bytes -> uint8 [..., hw] levels."""
    return torch.stack([packed & 15, packed >> 4], -1).reshape(*packed.shape[:-1], -1)[..., :hw]


def encode_thumbnail(image, max_side: int = 128) -> bytes:
    """PNG (up to 64 px, lossless and small there) or JPEG (quality 90) of ``image`` shrunk to ``max_side``."""
    from PIL import Image

    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    pil = pil.convert("RGB")
    if max(pil.size) > max_side:
        pil.thumbnail((max_side, max_side), Image.LANCZOS)
    buf = io.BytesIO()
    if max(pil.size) <= 64:
        pil.save(buf, format="PNG", optimize=True)
    else:
        pil.save(buf, format="JPEG", quality=90)
    return buf.getvalue()
