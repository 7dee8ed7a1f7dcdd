"""Weight edits of a U-Net: parameter deltas plus a fingerprint of the base weights they apply to.

Concept-erasure methods that change weights (the ESD and UCE baselines in
``saeuron_core.baselines``) produce a ``WeightEdit``. ``applied(unet, edit)`` swaps the edit in
and always restores the exact original tensors on exit, so one loaded pipeline serves every
method in turn.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from .errors import SaeuronError
from .io import atomic_dir, load_safetensors, save_safetensors, write_json

CROSS_ATTENTION = "attn2"
"""diffusers' name for the text cross-attention in every ``BasicTransformerBlock``."""
EDIT_FILE, META_FILE = "edit.safetensors", "erasure.json"


@dataclass(frozen=True)
class WeightEdit:
    """New values for some U-Net parameters, stored as differences from the base model."""

    method: str
    """Which method made the edit, e.g. "esd" or "uce"."""
    concepts: tuple[str, ...]
    deltas: dict[str, Tensor] = field(repr=False, compare=False)
    """Parameter name (as in ``unet.named_parameters()``) -> new value minus base value."""
    base_fingerprint: str
    """SHA-256 of the base values of the edited parameters: an edit only applies to its base."""
    settings: dict = field(default_factory=dict, compare=False)
    """The method's configuration, for reports and caching."""
    setup_seconds: float = 0.0
    """Wall time it took to compute the edit."""

    @property
    def storage_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.deltas.values())

    def save(self, folder: str | Path) -> Path:
        """``folder/edit.safetensors`` + ``folder/erasure.json``, swapped into place atomically."""
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            save_safetensors(self.deltas, tmp / EDIT_FILE)
            meta = {
                "method": self.method,
                "concepts": list(self.concepts),
                "base_fingerprint": self.base_fingerprint,
                "settings": self.settings,
                "setup_seconds": self.setup_seconds,
            }
            write_json(tmp / META_FILE, meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "WeightEdit":
        folder = Path(folder)
        meta_file = folder / META_FILE
        if not meta_file.is_file():
            raise SaeuronError(f"{folder} is not a saved erasure (no {META_FILE}); write one with `saeuron erase`")
        try:
            meta = json.loads(meta_file.read_text())
            return cls(
                meta["method"],
                tuple(meta["concepts"]),
                load_safetensors(folder / EDIT_FILE),
                meta["base_fingerprint"],
                meta.get("settings", {}),
                float(meta.get("setup_seconds", 0.0)),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise SaeuronError(f"{meta_file} is malformed ({e})") from None


def fingerprint(unet: nn.Module, names) -> str:
    """SHA-256 over the names and float32 bytes of the parameters ``names`` (sorted)."""
    params = dict(unet.named_parameters())
    h = hashlib.sha256()
    for name in sorted(names):
        if name not in params:
            raise SaeuronError(f"the U-Net has no parameter {name!r}")
        h.update(name.encode())
        h.update(params[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def applied(unet: nn.Module, edit: WeightEdit | None) -> Iterator[nn.Module]:
    """The U-Net with ``edit`` applied; the original tensors are restored on exit, always.

    ``None`` applies nothing. A mismatched base (another model, or an edit already applied)
    raises before anything changes.
    """
    if edit is None:
        yield unet
        return
    params = dict(unet.named_parameters())
    missing = [n for n in edit.deltas if n not in params]
    if missing:
        raise SaeuronError(
            f"this {edit.method} edit changes parameters the U-Net lacks ({', '.join(missing[:3])}...): it was made "
            "for another model"
        )
    for name, delta in edit.deltas.items():
        if params[name].shape != delta.shape:
            raise SaeuronError(
                f"{edit.method} edit of {name} has shape {tuple(delta.shape)}, the U-Net's is "
                f"{tuple(params[name].shape)}"
            )
    if fingerprint(unet, edit.deltas) != edit.base_fingerprint:
        raise SaeuronError(
            f"this {edit.method} edit was made for other weights (fingerprint mismatch): another model, or an edit is "
            "already applied"
        )
    originals = {n: params[n].detach().clone() for n in edit.deltas}
    try:
        with torch.no_grad():
            for name, delta in edit.deltas.items():
                params[name].add_(delta.to(params[name].device, params[name].dtype))
        yield unet
    finally:
        with torch.no_grad():
            for name, value in originals.items():
                params[name].copy_(value)


@contextlib.contextmanager
def restoring(unet: nn.Module, names) -> Iterator[dict[str, Tensor]]:
    """Yield copies of the named parameters' current values; put them back on exit, always."""
    params = dict(unet.named_parameters())
    originals = {n: params[n].detach().clone() for n in names}
    try:
        yield originals
    finally:
        with torch.no_grad():
            for name, value in originals.items():
                params[name].copy_(value)


def cross_attention_parameters(
    unet: nn.Module, projections: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out")
) -> dict[str, nn.Parameter]:
    """Parameters of every ``attn2`` module whose sub-module name starts with one of ``projections``."""
    out = {}
    for name, p in unet.named_parameters():
        parts = name.split(".")
        if CROSS_ATTENTION in parts:
            sub = parts[parts.index(CROSS_ATTENTION) + 1]
            if sub in projections:
                out[name] = p
    if not out:
        raise SaeuronError("this U-Net has no cross-attention (attn2) parameters to edit")
    return out
