"""Concept erasure by editing U-Net weights: the baselines SAeUron is compared against.

- **ESD-x** (Gandikota et al. 2023, "Erasing Concepts from Diffusion Models"): fine-tune the
  cross-attention (``attn2``) parameters so that the noise prediction for a concept prompt c
  follows the negatively guided target of a frozen copy,
  ``eps*(x_t, a) - eta * (eps*(x_t, c) - eps*(x_t, a))`` with a = "" (``EsdConfig.anchor``).
- **UCE** (Gandikota et al. 2024, "Unified Concept Editing"): a closed-form edit of every
  cross-attention key / value projection W so that the concept's text embeddings c_i produce
  the values of a target text, v*_i = W_old c*_i, while embeddings of preserved concepts c_p keep
  theirs (``uce_solve``).

Both produce a ``WeightEdit``: the differences from the base model for the parameters they
change, plus a fingerprint of those base parameters. ``applied(unet, edit)`` swaps the edit in
and always restores the exact original tensors on exit, so one loaded pipeline serves every
method in turn (the benchmark, the attack and the explorer rely on this).

Prompts: on a model with a concept vocabulary (MiniCanvas) a concept's prompts are the
benchmark templates, "An image of {object} in {style} style." with every partner concept (and
"An image of {object}." for objects); on a general SD model the concept text is the prompt.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..edits import WeightEdit, cross_attention_parameters, fingerprint, restoring
from ..errors import SaeuronError
from ..pipeline import generate_jobs, text_embeddings
from ..prompts import concept_prompt
from ..training import load_state, save_state

ERASURE_METHODS = ("esd", "uce")


# --------------------------------------------------------------------------- prompts
def check_concepts(info, concepts) -> tuple[str, ...]:
    """The concepts, de-duplicated; with a vocabulary, each must be in it (clear error otherwise)."""
    concepts = tuple(dict.fromkeys(c.strip() for c in concepts if isinstance(c, str) and c.strip()))
    if not concepts:
        raise SaeuronError("no concept to erase")
    objects, styles = info.concepts_of("object"), info.concepts_of("style")
    vocab = (*objects, *styles)
    if vocab:
        unknown = [c for c in concepts if c not in vocab]
        if unknown:
            raise SaeuronError(
                f"concept {unknown[0]!r} is not in this model's vocabulary; "
                f"objects: {', '.join(objects)}; styles: {', '.join(styles)}"
            )
    return concepts


def concept_prompts(info, concept: str) -> list[str]:
    """Prompts that show ``concept``: every template pairing on a vocabulary model, else the text."""
    objects, styles = info.concepts_of("object"), info.concepts_of("style")
    if concept in styles:
        return [concept_prompt(o, concept) for o in objects]
    if concept in objects:
        return [concept_prompt(concept, s) for s in styles] + [concept_prompt(concept, None)]
    return [concept]


def retained_prompts(info, concepts) -> list[str]:
    """Vocabulary prompts that show none of ``concepts`` (styled and unstyled)."""
    pairs = [(o, s) for o in info.concepts_of("object") for s in (*info.concepts_of("style"), None)]
    return [concept_prompt(o, s) for o, s in pairs if o not in concepts and s not in concepts]


# --------------------------------------------------------------------------- UCE
@dataclass(frozen=True)
class UceConfig:
    """Unified Concept Editing (closed form) settings."""

    erase_scale: float = 1.0
    """Weight of the edit constraints W c_i = v*_i."""
    preserve_scale: float = 0.1
    """Weight of the preservation constraints W c_p = W_old c_p (there are many more of them)."""
    lamb: float = 0.1
    """Ridge weight keeping W near W_old (and the normal matrix invertible)."""
    target: str = "auto"
    """Target text: "auto" maps a style's prompts to the unstyled prompt and an object's (or a free
    concept's) to the empty prompt ""; any other value is a fixed target text."""

    def __post_init__(self):
        for name in ("erase_scale", "preserve_scale", "lamb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise SaeuronError(f"UCE {name} must be a finite number >= 0, got {value!r}")
        if self.lamb <= 0:
            raise SaeuronError("UCE lamb must be > 0 (it keeps the normal matrix invertible)")


def uce_solve(
    w_old: Tensor,
    edit_in: Tensor,
    edit_out: Tensor,
    preserve_in: Tensor,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
    lamb: float = 0.1,
) -> Tensor:
    """The UCE closed form for one projection W_old [out, d].

    Minimises  erase_scale * sum_i ||W c_i - v*_i||^2 + preserve_scale * sum_p ||W c_p - W_old c_p||^2
    + lamb * ||W - W_old||_F^2  over W, with c_i = ``edit_in`` [n, d], v*_i = ``edit_out`` [n, out]
    and c_p = ``preserve_in`` [m, d]:

        W = (lamb W_old + erase_scale V*^T C + preserve_scale W_old C_p^T C_p)
            (lamb I + erase_scale C^T C + preserve_scale C_p^T C_p)^-1
    """
    w = w_old.double()
    c, v, p = edit_in.double(), edit_out.double(), preserve_in.double()
    d = w.shape[1]
    if c.shape[1] != d or p.shape[1] != d or v.shape != (c.shape[0], w.shape[0]):
        raise SaeuronError(
            f"UCE shapes do not fit: W {tuple(w.shape)}, edit in {tuple(c.shape)}, edit out {tuple(v.shape)}, "
            f"preserve in {tuple(p.shape)}"
        )
    left = lamb * w + erase_scale * v.T @ c + preserve_scale * (w @ p.T) @ p
    normal = lamb * torch.eye(d, dtype=torch.float64) + erase_scale * c.T @ c + preserve_scale * p.T @ p
    # W normal = left; normal is symmetric positive definite, so solve instead of inverting.
    return torch.linalg.solve(normal, left.T).T.to(w_old.dtype)


def _concept_start(ids: Tensor, concept_ids: list[int]) -> int:
    """Index of the first occurrence of the token sequence ``concept_ids`` in ``ids``."""
    row, n = ids.tolist(), len(concept_ids)
    for i in range(len(row) - n + 1):
        if row[i : i + n] == concept_ids:
            return i
    raise SaeuronError("the concept's tokens do not occur in its prompt (truncated?)")


def uce_pairs(pipe, old_prompts: list[str], new_prompts: list[str], concept: str) -> tuple[Tensor, Tensor]:
    """Aligned (old, new) token embeddings [n, d] for UCE, as in the UCE reference code.

    Old tokens run from the concept's first token to the end of the sequence; new tokens from the
    first token where the target prompt departs from the old one; both cut to the same length.
    The text encoder is causal, so tokens before the concept equal the target's and need no edit.
    """
    ids_old, emb_old = text_embeddings(pipe, old_prompts)
    ids_new, emb_new = text_embeddings(pipe, new_prompts)
    concept_ids = pipe.tokenizer(concept, add_special_tokens=False).input_ids
    olds, news = [], []
    length = ids_old.shape[1]
    for i in range(len(old_prompts)):
        start_old = _concept_start(ids_old[i], concept_ids)
        same = (ids_old[i] == ids_new[i]).long()
        start_new = int(same.cumprod(0).sum())  # length of the common prefix
        n = length - max(start_old, start_new)
        olds.append(emb_old[i, start_old : start_old + n])
        news.append(emb_new[i, start_new : start_new + n])
    return torch.cat(olds), torch.cat(news)


def uce_targets(info, concept: str, prompts: list[str], target: str) -> list[str]:
    if target != "auto":
        return [target] * len(prompts)
    if concept in info.concepts_of("style"):
        return [concept_prompt(o, None) for o in info.concepts_of("object")]
    return [""] * len(prompts)


def uce_erase(pipe, info, concepts, cfg: UceConfig = UceConfig()) -> WeightEdit:
    """Erase ``concepts`` with UCE: one closed-form solve per cross-attention key / value matrix."""
    concepts = check_concepts(info, concepts)
    t0 = time.perf_counter()
    unet = pipe.unet
    olds, news = [], []
    for concept in concepts:
        prompts = concept_prompts(info, concept)
        old, new = uce_pairs(pipe, prompts, uce_targets(info, concept, prompts, cfg.target), concept)
        olds.append(old)
        news.append(new)
    edit_in, target_in = torch.cat(olds), torch.cat(news)
    keep = retained_prompts(info, concepts) if info.vocabulary else []
    _, keep_emb = text_embeddings(pipe, keep + [""])
    preserve_in = keep_emb[:, 1:].reshape(-1, keep_emb.shape[-1])  # every token but BOS (shared by all)
    params = cross_attention_parameters(unet, ("to_k", "to_v"))
    deltas = {}
    for name, p in params.items():
        if not name.endswith("weight"):
            continue
        w_old = p.detach().float().cpu()
        w_new = uce_solve(
            w_old, edit_in, target_in @ w_old.T, preserve_in, cfg.erase_scale, cfg.preserve_scale, cfg.lamb
        )
        deltas[name] = w_new - w_old
    return WeightEdit("uce", concepts, deltas, fingerprint(unet, deltas), asdict(cfg), time.perf_counter() - t0)


# --------------------------------------------------------------------------- ESD
@dataclass(frozen=True)
class EsdConfig:
    """ESD-x (cross-attention fine-tuning) settings."""

    iterations: int = 150
    """Optimiser steps."""
    batch_size: int = 4
    """Noised concept images per step."""
    lr: float = 1e-3
    """Adam learning rate for the cross-attention parameters (chosen on the sweep split: 2e-4
    left stripes 50% intact at 150 iterations, 1e-3 removed stripes, solid and outline)."""
    negative_guidance: float = 1.0
    """eta in the target eps(a) - eta (eps(c) - eps(a))."""
    anchor: str = "auto"
    """The reference prompt a: "empty" is the original ESD (a = ""); "auto" uses the concept's
    prompt without the concept where the vocabulary has one (a style's unstyled prompt "An image
    of {object}."), else "". With template prompts, c - "" also points at the object, so the
    original target erases the object along with a style."""
    pool_size: int = 24
    """Images of the concept the frozen model generates once; x_t are noised from them."""
    pool_guidance: float | None = None
    """Guidance for the pool images (None: the model's default)."""
    pool_steps: int | None = None
    """Denoising steps for the pool images (None: the model's default)."""
    checkpoint_every: int = 25
    """Iterations between resumable checkpoints (when a work folder is given)."""
    seed: int = 0

    def __post_init__(self):
        for name in ("iterations", "batch_size", "pool_size", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SaeuronError(f"ESD {name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise SaeuronError(f"ESD lr must be a positive number, got {self.lr!r}")
        if self.anchor not in ("auto", "empty"):
            raise SaeuronError(f"ESD anchor must be 'auto' or 'empty', got {self.anchor!r}")
        if not math.isfinite(self.negative_guidance) or self.negative_guidance < 0:
            raise SaeuronError(f"ESD negative_guidance must be >= 0, got {self.negative_guidance!r}")

    def identity(self) -> dict:
        """The fields that decide the result (checkpoint cadence excluded)."""
        d = asdict(self)
        d.pop("checkpoint_every")
        return d


def anchor_prompts(info, concept: str, anchor: str = "auto") -> list[str]:
    """ESD's reference prompt for each of ``concept_prompts(info, concept)``."""
    prompts = concept_prompts(info, concept)
    if anchor == "auto" and concept in info.concepts_of("style"):
        return [concept_prompt(o, None) for o in info.concepts_of("object")]
    return [""] * len(prompts)


def _esd_pool(pipe, info, concepts, cfg: EsdConfig) -> tuple[list[str], list[str], Tensor]:
    """(prompt and anchor per pool image, clean latents [P, 4, h, w]) from the frozen model."""
    pairs = [pa for c in concepts for pa in zip(concept_prompts(info, c), anchor_prompts(info, c, cfg.anchor))]
    jobs = [(pairs[i % len(pairs)][0], cfg.seed * 100_003 + i) for i in range(cfg.pool_size)]
    anchors = [pairs[i % len(pairs)][1] for i in range(cfg.pool_size)]
    guidance = cfg.pool_guidance if cfg.pool_guidance is not None else info.default_guidance
    latents = generate_jobs(
        pipe, jobs, cfg.pool_steps or info.default_steps, guidance, batch_size=12, output_type="latent"
    )
    return [p for p, _ in jobs], anchors, torch.stack(latents)


def esd_loss(
    unet: nn.Module, frozen: dict[str, Tensor], x_t: Tensor, t: Tensor, cond: Tensor, anchor: Tensor, eta: float
) -> Tensor:
    """|| eps(x_t, c) - [eps*(x_t, a) - eta (eps*(x_t, c) - eps*(x_t, a))] ||^2 (mean).

    eps is the U-Net as it is; eps* the same U-Net with ``frozen`` parameter values swapped in
    (the original cross-attention weights), so no second copy of the model is needed.
    """
    with torch.no_grad():
        both = torch.func.functional_call(
            unet, frozen, (torch.cat([x_t, x_t]), t), {"encoder_hidden_states": torch.cat([anchor, cond])}, strict=False
        ).sample
        e_anchor, e_concept = both.chunk(2)
        target = e_anchor - eta * (e_concept - e_anchor)
    pred = unet(x_t, t, encoder_hidden_states=cond).sample
    return torch.nn.functional.mse_loss(pred, target)


def _esd_state_file(work: Path) -> Path:
    return work / "esd_state.pt"


def esd_erase(
    pipe,
    info,
    concepts,
    cfg: EsdConfig = EsdConfig(),
    work: str | Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> WeightEdit:
    """Erase ``concepts`` with ESD-x; the pipeline's U-Net is left exactly as it was.

    ``work``: a folder for checkpoints every ``cfg.checkpoint_every`` iterations; a rerun with the
    same model, concepts and settings resumes from the last one (bit-identical: every iteration
    draws from its own seeded generator). ``progress(iteration, total, loss)`` is called per
    iteration; ``should_stop()`` True makes it checkpoint and raise (SIGTERM handling).

    x_t: the original code samples x_t with the model being trained at every iteration; here the
    frozen model generates ``pool_size`` concept images once and each iteration noises a batch of
    them to random timesteps (about 10x fewer U-Net calls; the same concept distribution).
    """
    concepts = check_concepts(info, concepts)
    unet, scheduler = pipe.unet, pipe.scheduler
    params = cross_attention_parameters(unet)
    names = sorted(params)
    base = fingerprint(unet, names)
    identity = {"concepts": list(concepts), "base": base, "config": cfg.identity()}
    work = Path(work) if work is not None else None
    t0 = time.perf_counter()
    pool_prompts, pool_anchors, pool = _esd_pool(pipe, info, concepts, cfg)  # from the frozen (base) model
    _, pool_emb = text_embeddings(pipe, pool_prompts)
    _, anchor_emb = text_embeddings(pipe, pool_anchors)
    with restoring(unet, names) as originals:
        opt = torch.optim.Adam([params[n] for n in names], lr=cfg.lr)
        start, elapsed = _esd_resume(work, identity, params, names, opt) if work else (0, 0.0)
        frozen = {n: originals[n] for n in names}
        n_train = scheduler.config.num_train_timesteps
        loss_value = float("nan")
        for it in range(start, cfg.iterations):
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)
            pick = torch.randint(len(pool), (cfg.batch_size,), generator=g)
            t = torch.randint(n_train, (1,), generator=g)
            noise = torch.randn(pool[pick].shape, generator=g)
            x_t = scheduler.add_noise(pool[pick], noise, t)
            cond = pool_emb[pick]
            loss = esd_loss(unet, frozen, x_t, t, cond, anchor_emb[pick], cfg.negative_guidance)
            grads = torch.autograd.grad(loss, [params[n] for n in names])
            for n, gr in zip(names, grads):
                params[n].grad = gr
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_value = loss.item()
            done = it + 1
            if progress:
                progress(done, cfg.iterations, loss_value)
            stop = should_stop is not None and should_stop()
            if work and (done % cfg.checkpoint_every == 0 or stop) and done < cfg.iterations:
                _esd_checkpoint(work, identity, params, names, opt, done, elapsed + time.perf_counter() - t0)
            if stop:
                raise SaeuronError(
                    f"ESD stopped at iteration {done}/{cfg.iterations}"
                    + ("; checkpoint saved, run the same command to resume" if work else "")
                )
        deltas = {n: (params[n].detach() - originals[n]).clone() for n in names}
    seconds = elapsed + time.perf_counter() - t0
    settings = {**asdict(cfg), "final_loss": loss_value}
    return WeightEdit("esd", concepts, deltas, base, settings, seconds)


def _esd_checkpoint(work: Path, identity: dict, params, names, opt, iteration: int, seconds: float) -> None:
    state = {
        "identity": identity,
        "iteration": iteration,
        "seconds": seconds,
        "params": {n: params[n].detach() for n in names},
        "opt": opt.state_dict(),
    }
    save_state(_esd_state_file(work), state)


def _esd_resume(work: Path, identity: dict, params, names, opt) -> tuple[int, float]:
    """Load a matching checkpoint into params and optimiser; (iteration, seconds spent) or (0, 0)."""
    path = _esd_state_file(work)
    if (state := load_state(path)) is None:
        return 0, 0.0
    if state["identity"] != identity:
        raise SaeuronError(
            f"{path} is a checkpoint of another ESD run (model, concepts or settings differ); use another work folder "
            "or delete it"
        )
    with torch.no_grad():
        for n in names:
            params[n].copy_(state["params"][n])
    opt.load_state_dict(state["opt"])
    return state["iteration"], state["seconds"]


def erase(pipe, info, method: str, concepts, config=None, work=None, progress=None, should_stop=None) -> WeightEdit:
    """``uce_erase`` or ``esd_erase`` by name."""
    if method == "uce":
        return uce_erase(pipe, info, concepts, config or UceConfig())
    if method == "esd":
        return esd_erase(
            pipe, info, concepts, config or EsdConfig(), work=work, progress=progress, should_stop=should_stop
        )
    raise SaeuronError(f"unknown erasure method {method!r}; methods: {', '.join(ERASURE_METHODS)}")
