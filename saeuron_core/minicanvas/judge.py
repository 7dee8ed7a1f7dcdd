"""The benchmark's judge: a small CNN with an object head and a style head.

It plays the role of UnlearnCanvas' style and object classifiers: every unlearning metric is a
judge verdict on generated images, so it is trained with augmentations that mimic generated
images (autoencoder round trips, blur, noise, tints) and must be near-perfect on held-out renders.
Shipped as ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..errors import SaeuronError
from ..io import load_safetensors, save_safetensors, write_json
from .dataset import IMAGE_SIZE, OBJECTS, STYLES


@dataclass
class JudgeConfig:
    objects: list[str] = field(default_factory=lambda: list(OBJECTS))
    """Class names of the object head, in logit order."""
    styles: list[str] = field(default_factory=lambda: list(STYLES))
    """Class names of the style head, in logit order."""
    channels: list[int] = field(default_factory=lambda: [32, 64, 96, 128])
    """Output channels of each conv stage; every stage halves the resolution."""
    image_size: int = IMAGE_SIZE
    """Side of the square RGB input in pixels."""

    def __post_init__(self):
        if len(self.objects) < 2 or len(self.styles) < 2:
            raise SaeuronError("a judge needs at least two objects and two styles")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise SaeuronError(f"judge channels must be positive, got {self.channels}")
        if self.image_size < 16:
            raise SaeuronError(f"judge image_size must be >= 16, got {self.image_size}")


class Verdict(NamedTuple):
    object_logits: torch.Tensor  # [N, n_objects]
    style_logits: torch.Tensor  # [N, n_styles]
    features: torch.Tensor  # [N, channels[-1]] penultimate features (for Frechet distances)


class Judge(nn.Module):
    """conv stages (stride-2 3x3 conv, GroupNorm, SiLU, 3x3 conv) -> global average pool -> two heads.

    Input: float images [N, 3, H, W] in [0, 1].
    """

    def __init__(self, cfg: JudgeConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in = 3
        for c in cfg.channels:
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                nn.GroupNorm(8, c),
                nn.SiLU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.GroupNorm(8, c),
                nn.SiLU(),
            ]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.object_head = nn.Linear(c_in, len(cfg.objects))
        self.style_head = nn.Linear(c_in, len(cfg.styles))

    def forward(self, images: torch.Tensor) -> Verdict:
        if images.ndim != 4 or images.shape[1] != 3:
            raise SaeuronError(f"judge expects [N, 3, H, W] images, got {tuple(images.shape)}")
        feats = self.body(images * 2 - 1).mean(dim=(2, 3))
        return Verdict(self.object_head(feats), self.style_head(feats), feats)

    @torch.inference_mode()
    def classify(self, images, batch_size: int = 256) -> dict[str, list]:
        """Predicted object and style names (and confidences) for uint8 HWC or float NCHW images,
        the full class probabilities (``object_probs`` [N, n_objects], ``style_probs``) and the
        penultimate ``features`` [N, D] of the same pass (for Frechet distances)."""
        x = to_tensor(images)
        objs, styles, po, ps, feats, all_o, all_s = [], [], [], [], [], [], []
        for i in range(0, len(x), batch_size):
            v = self(x[i : i + batch_size])
            feats.append(v.features)
            o = v.object_logits.softmax(-1)
            s = v.style_logits.softmax(-1)
            all_o.append(o)
            all_s.append(s)
            objs += [self.cfg.objects[j] for j in o.argmax(-1).tolist()]
            styles += [self.cfg.styles[j] for j in s.argmax(-1).tolist()]
            po += o.max(-1).values.tolist()
            ps += s.max(-1).values.tolist()
        return {
            "object": objs,
            "style": styles,
            "object_conf": po,
            "style_conf": ps,
            "object_probs": torch.cat(all_o),
            "style_probs": torch.cat(all_s),
            "features": torch.cat(feats),
        }

    def probability(self, verdict: dict, concept: str) -> torch.Tensor:
        """[N] the probability ``classify`` gave ``concept`` (an object or a style name)."""
        for kind, names in (("object", self.cfg.objects), ("style", self.cfg.styles)):
            if concept in names:
                return verdict[f"{kind}_probs"][:, names.index(concept)]
        raise SaeuronError(f"the judge knows no concept {concept!r}")

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        write_json(folder / "config.json", asdict(self.cfg))
        save_safetensors(self.state_dict(), folder / "model.safetensors")

    @classmethod
    def load(cls, folder: str | Path) -> "Judge":
        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise SaeuronError(f"{folder} is not a judge folder (no config.json)")
        judge = cls(JudgeConfig(**json.loads(cfg_path.read_text())))
        state = load_safetensors(folder / "model.safetensors")
        missing, unexpected = judge.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SaeuronError(
                f"{folder}/model.safetensors does not match its config "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        return judge.eval()


def to_tensor(images) -> torch.Tensor:
    """uint8 [N, H, W, 3] (numpy or torch), a list of PIL images, or float [N, 3, H, W] -> float."""
    if isinstance(images, list):
        images = np.stack([np.asarray(im.convert("RGB")) for im in images])
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise SaeuronError(f"expected uint8 images [N, H, W, 3], got {tuple(images.shape)}")
        return images.permute(0, 3, 1, 2).float() / 255.0
    return images.float()


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Perturbations that generated images show and clean renders do not (float NCHW in [0, 1])."""
    n = x.shape[0]

    def u(lo, hi, *shape):
        return torch.rand(*shape, generator=generator) * (hi - lo) + lo

    # per-channel gain and offset: tints and exposure shifts
    x = x * u(0.88, 1.12, n, 3, 1, 1) + u(-0.06, 0.06, n, 3, 1, 1)
    # blur for a random half: a down-up resample like a lossy autoencoder
    blur = torch.rand(n, generator=generator) < 0.5
    if blur.any():
        size = x.shape[-1]
        small = torch.nn.functional.interpolate(x[blur], scale_factor=0.5, mode="area")
        x[blur] = torch.nn.functional.interpolate(small, size=size, mode="bilinear")
    x = x + torch.randn(x.shape, generator=generator) * u(0.0, 0.05, n, 1, 1, 1)
    return x.clamp(0, 1)
