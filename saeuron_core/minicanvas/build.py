"""`saeuron build-model`: train the bundled MiniCanvas model from scratch (data, autoencoder, judge,
text encoder + U-Net).

Stages, each resumable and each recorded in ``<work>/<stage>/done.json`` when finished:

1. ``data``   render train / held-out MiniCanvas images (uint8, cached as .npy)
2. ``vae``    train a small ``AutoencoderKL`` (64x64x3 -> 16x16x4) on random crops
3. ``judge``  train the object/style judge on renders and their autoencoder round trips
4. ``latents`` encode the train images once (posterior mean and std)
5. ``unet``   train ``CLIPTextModel`` + ``UNet2DConditionModel`` jointly, DDPM epsilon loss
             with min-SNR weighting, EMA and LR warm-up (diffusers' ``compute_snr``,
             ``EMAModel``, ``get_scheduler``); checkpoints (atomic) and exports a pipeline as it goes
6. ``export`` write the EMA weights as a ``StableDiffusionPipeline`` folder + the judge

The recipe (``BuildConfig``), the components' architecture and the pipeline export live in
``model``; this module holds the data and the training loops.

Every stage that trains checkpoints atomically (``saeuron_core.training``); SIGTERM checkpoints
and stops; killing the process and running the same command again continues from the last
checkpoint.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import SaeuronError
from ..io import atomic_dir, atomic_path, write_json
from ..training import Progress, StopRequest, load_state, mark_stage_done, save_state, stage_done
from . import dataset as mc
from .model import (
    BUNDLED_CONFIG_NAME,
    BuildConfig,
    export_pipeline,
    make_schedulers,
    make_text_encoder,
    make_unet,
    make_vae,
)


# --------------------------------------------------------------------------- helpers
def _lr_schedule(name: str, opt, state: dict | None, step: int, **kwargs):
    """diffusers' LR schedule ``name`` for ``opt``, at ``step`` when resuming.

    Create it before loading the optimizer state (it records the base learning rates). A
    checkpoint from before schedules were saved is positioned by its step count.
    """
    from diffusers.optimization import get_scheduler

    sched = get_scheduler(name, opt, **kwargs)
    if state is not None:
        opt.load_state_dict(state["opt"])
        if "lr_scheduler" in state:
            sched.load_state_dict(state["lr_scheduler"])
        else:
            sched.last_epoch = step
            for group, base, rule in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["lr"] = base * rule(step)
    return sched


def _stop(save, stage: str, step: int):
    save()
    raise SaeuronError(f"{stage}: stopped by SIGTERM at step {step}; checkpoint saved, run the same command to resume")


def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _log(msg: str) -> None:
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}")


# --------------------------------------------------------------------------- stages
def stage_data(cfg: BuildConfig, work: Path) -> dict:
    if (info := stage_done(work, "data")) is not None:
        return info
    t0 = time.time()
    out = work / "data"
    pairs = mc.all_pairs()
    for split, per_pair in (("train", cfg.images_per_pair), ("heldout", cfg.heldout_per_pair)):
        seeds = mc.split_seeds(split, per_pair)
        items = [(o, s, seed) for seed in seeds for (o, s) in pairs]
        images = np.empty((len(items), mc.IMAGE_SIZE, mc.IMAGE_SIZE, 3), dtype=np.uint8)
        for i, (o, s, seed) in enumerate(tqdm(items, desc=f"render {split}", mininterval=5)):
            images[i] = mc.render(o, s, seed)
        labels = np.array([(mc.OBJECTS.index(o), mc.STYLES.index(s)) for o, s, _ in items], dtype=np.int64)
        for name, arr in ((f"{split}_images.npy", images), (f"{split}_labels.npy", labels)):
            with atomic_path(out / name) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, arr)
    return mark_stage_done(work, "data", {"seconds": round(time.time() - t0, 1)})


def _load_split(work: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    d = work / "data"
    return np.load(d / f"{split}_images.npy"), np.load(d / f"{split}_labels.npy")


def stage_vae(cfg: BuildConfig, work: Path) -> dict:
    if (info := stage_done(work, "vae")) is not None:
        return info
    images, _ = _load_split(work, "train")
    vae = make_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    ckpt = work / "vae" / "state.pt"
    step, elapsed = 0, 0.0
    if (state := load_state(ckpt)) is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed = state["step"], state["elapsed"]
        _log(f"vae: resumed at step {step}")
    rng = np.random.default_rng(cfg.seed + step)
    crop = 32
    t_start = time.time() - elapsed

    def save():
        save_state(
            ckpt, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": time.time() - t_start}
        )

    progress = Progress("vae", cfg.vae_steps, step, save, minutes=cfg.checkpoint_minutes)
    with StopRequest() as stop:
        while step < cfg.vae_steps:
            if stop.requested:
                _stop(save, "vae", step)
            idx = rng.integers(0, len(images), cfg.vae_batch)
            ys, xs = rng.integers(0, mc.IMAGE_SIZE - crop + 1, size=(2, cfg.vae_batch))
            batch = np.stack([images[i, y : y + crop, x : x + crop] for i, y, x in zip(idx, ys, xs)])
            x = _images_to_tensor(batch)
            # Warm-up, then cosine down to a floor of 0.1: not one of diffusers' schedules.
            lr = 1e-3 * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps)))
            for g in opt.param_groups:
                g["lr"] = lr
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample
            loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + 1e-6 * post.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            step += 1
            progress.tick(step, loss=f"{loss.item():.4f}")
    progress.close()
    vae.eval()
    held, _ = _load_split(work, "heldout")
    with torch.inference_mode():
        x = _images_to_tensor(held[:256])
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        mse = ((rec - x) / 2).pow(2).mean().item()
        latents = torch.cat(
            [
                vae.encode(_images_to_tensor(images[i : i + 256])).latent_dist.mean
                for i in range(0, min(len(images), 2048), 256)
            ]
        )
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    with atomic_dir(work / "vae" / "model") as tmp:
        vae.save_pretrained(tmp)
    psnr = 10 * math.log10(1.0 / max(mse, 1e-12))
    _log(f"vae: held-out PSNR {psnr:.2f} dB, latent scaling factor {scaling:.4f}")
    return mark_stage_done(
        work,
        "vae",
        {
            "steps": step,
            "seconds": round(time.time() - t_start, 1),
            "heldout_psnr_db": round(psnr, 2),
            "scaling_factor": scaling,
        },
    )


def _roundtrip(vae, images: np.ndarray, batch: int = 128) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = _images_to_tensor(images[i : i + batch])
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample
            out.append(((rec.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def judge_accuracy(judge, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Object and style accuracy of the judge on uint8 images with (object, style) index labels."""
    verdict = judge.classify(images)
    obj = np.array([judge.cfg.objects.index(o) for o in verdict["object"]])
    sty = np.array([judge.cfg.styles.index(s) for s in verdict["style"]])
    return {
        "object": float((obj == labels[:, 0]).mean()),
        "style": float((sty == labels[:, 1]).mean()),
    }


def stage_judge(cfg: BuildConfig, work: Path) -> dict:
    from diffusers import AutoencoderKL

    from .judge import Judge, JudgeConfig, augment, to_tensor

    if (info := stage_done(work, "judge")) is not None:
        return info
    images, labels = _load_split(work, "train")
    held, held_labels = _load_split(work, "heldout")
    vae = AutoencoderKL.from_pretrained(work / "vae" / "model").eval()
    # Round trips through the autoencoder look like generated images (soft edges, slight colour
    # shifts); the judge trains on both so it does not mistake those artefacts for a style.
    n_rt = min(len(images), 4800)
    rt_path = work / "judge" / "roundtrip.npy"
    if rt_path.is_file():
        roundtrip = np.load(rt_path)
    else:
        roundtrip = _roundtrip(vae, images[:n_rt])
        with atomic_path(rt_path) as tmp, open(tmp, "wb") as f:
            np.save(f, roundtrip)
    pool = np.concatenate([images, roundtrip])
    pool_labels = np.concatenate([labels, labels[:n_rt]])

    torch.manual_seed(cfg.seed)
    judge = Judge(JudgeConfig())
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    ckpt = work / "judge" / "state.pt"
    step, t0 = 0, time.time()
    if (state := load_state(ckpt)) is not None:
        judge.load_state_dict(state["model"])
        step = state["step"]
    sched = _lr_schedule("cosine", opt, state, step, num_warmup_steps=0, num_training_steps=cfg.judge_steps)
    gen = torch.Generator().manual_seed(cfg.seed + step)
    rng = np.random.default_rng(cfg.seed + step)

    def save():
        save_state(
            ckpt,
            {"model": judge.state_dict(), "opt": opt.state_dict(), "lr_scheduler": sched.state_dict(), "step": step},
        )

    progress = Progress("judge", cfg.judge_steps, step, save, minutes=cfg.checkpoint_minutes)
    judge.train()
    with StopRequest() as stop:
        while step < cfg.judge_steps:
            if stop.requested:
                _stop(save, "judge", step)
            idx = rng.integers(0, len(pool), cfg.judge_batch)
            x = augment(to_tensor(pool[idx]), gen)
            y = torch.from_numpy(pool_labels[idx])
            v = judge(x)
            loss = torch.nn.functional.cross_entropy(v.object_logits, y[:, 0]) + torch.nn.functional.cross_entropy(
                v.style_logits, y[:, 1]
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            progress.tick(step, loss=f"{loss.item():.4f}")
    progress.close()
    judge.eval()
    acc_clean = judge_accuracy(judge, held, held_labels)
    acc_rt = judge_accuracy(judge, _roundtrip(vae, held), held_labels)
    judge.save(work / "judge" / "model")
    _log(f"judge: held-out renders {acc_clean}, their autoencoder round trips {acc_rt}")
    return mark_stage_done(
        work,
        "judge",
        {
            "steps": step,
            "seconds": round(time.time() - t0, 1),
            "heldout_renders": acc_clean,
            "heldout_roundtrips": acc_rt,
            "heldout_images": int(len(held)),
        },
    )


def stage_latents(cfg: BuildConfig, work: Path) -> dict:
    from diffusers import AutoencoderKL

    from ..io import save_safetensors

    if (info := stage_done(work, "latents")) is not None:
        return info
    t0 = time.time()
    images, labels = _load_split(work, "train")
    vae = AutoencoderKL.from_pretrained(work / "vae" / "model").eval()
    means, stds = [], []
    with torch.inference_mode():
        for i in tqdm(range(0, len(images), 128), desc="encode latents", mininterval=5):
            dist = vae.encode(_images_to_tensor(images[i : i + 128])).latent_dist
            means.append(dist.mean.half())
            stds.append(dist.std.half())
    save_safetensors(
        {"mean": torch.cat(means), "std": torch.cat(stds), "labels": torch.from_numpy(labels)},
        work / "latents" / "latents.safetensors",
    )
    return mark_stage_done(work, "latents", {"seconds": round(time.time() - t0, 1), "count": int(len(images))})


def _caption_table(tokenizer) -> tuple[torch.Tensor, int]:
    """Token ids for every full prompt [n_obj, n_style], every unstyled prompt, and ""."""
    texts = [mc.prompt(o, s) for o in mc.OBJECTS for s in mc.STYLES]
    texts += [mc.prompt(o) for o in mc.OBJECTS] + [""]
    ids = tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return ids, len(mc.OBJECTS) * len(mc.STYLES)


def stage_unet(cfg: BuildConfig, work: Path, log_every: int = 50) -> dict:
    from diffusers.training_utils import EMAModel, compute_snr
    from transformers import CLIPTokenizer

    from ..io import load_safetensors
    from .tokenizer import write_tokenizer

    budget = cfg.unet_minutes * 60
    if (info := stage_done(work, "unet")) is not None:
        spent = info.get("seconds", info["minutes"] * 60)
        if info["steps"] >= cfg.unet_steps or spent >= budget - 1:
            return info
        _log("unet: the budget grew since the last run; training on")
    tok_dir = work / "unet" / "tokenizer"
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir) if tok_dir.is_dir() else write_tokenizer(tok_dir)
    lat = load_safetensors(work / "latents" / "latents.safetensors")
    means, stds, labels = lat["mean"], lat["std"], lat["labels"]
    vae_cfg = json.loads((work / "vae" / "model" / "config.json").read_text())
    scaling = vae_cfg["scaling_factor"]
    latent_size = means.shape[-1]

    torch.manual_seed(cfg.seed)
    text_encoder = make_text_encoder(cfg, len(tokenizer))
    unet = make_unet(cfg, latent_size)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    ema = EMAModel(params, decay=cfg.ema_decay, foreach=True)
    noise_sched, _ = make_schedulers()

    ckpt = work / "unet" / "state.pt"
    step, elapsed, seen = 0, 0.0, 0
    if (state := load_state(ckpt)) is not None:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        step, elapsed, seen = state["step"], state["elapsed"], state["seen"]
        if isinstance(state["ema"], list):  # a checkpoint from before EMAModel: the averages alone
            ema.load_state_dict({"shadow_params": state["ema"], "optimization_step": step})
        else:
            ema.load_state_dict(state["ema"])
        _log(f"unet: resumed at step {step} ({seen} images seen, {elapsed / 60:.1f} min)")
    lr_sched = _lr_schedule("constant_with_warmup", opt, state, step, num_warmup_steps=300)
    caption_ids, n_full = _caption_table(tokenizer)
    n_styles = len(mc.STYLES)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)

    def save_checkpoint():
        save_state(
            ckpt,
            {
                "unet": unet.state_dict(),
                "text_encoder": text_encoder.state_dict(),
                "opt": opt.state_dict(),
                "lr_scheduler": lr_sched.state_dict(),
                "ema": ema.state_dict(),
                "step": step,
                "elapsed": elapsed,
                "seen": seen,
            },
        )
        export_pipeline(
            cfg,
            work,
            work / "unet" / "pipeline",
            unet,
            text_encoder,
            ema.shadow_params,
            tokenizer,
            {"steps": step, "images_seen": seen, "minutes": round(elapsed / 60, 1)},
        )

    run_start = time.time() - elapsed
    progress = Progress(
        "unet", cfg.unet_steps, step, save_checkpoint, minutes=cfg.checkpoint_minutes, postfix_every=log_every
    )
    unet.train()
    text_encoder.train()
    running = None
    with StopRequest() as stop:
        while step < cfg.unet_steps and elapsed < budget:
            if stop.requested:
                _stop(save_checkpoint, "unet", step)
            idx = torch.randint(0, len(means), (cfg.unet_batch,), generator=gen)
            eps0 = torch.randn(means[idx].shape, generator=gen)
            x0 = (means[idx].float() + stds[idx].float() * eps0) * scaling
            lab = labels[idx]
            u = torch.rand(cfg.unet_batch, generator=gen)
            cap = lab[:, 0] * n_styles + lab[:, 1]
            cap = torch.where(u < cfg.object_only + cfg.caption_dropout, n_full + lab[:, 0], cap)
            cap = torch.where(u < cfg.caption_dropout, torch.full_like(cap, len(caption_ids) - 1), cap)
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            noisy = noise_sched.add_noise(x0, noise, t)
            cond = text_encoder(caption_ids[cap]).last_hidden_state
            pred = unet(noisy, t, cond).sample
            snr = compute_snr(noise_sched, t)
            weights = torch.clamp(snr, max=cfg.min_snr_gamma) / snr  # min-SNR-gamma, epsilon target
            loss = (weights * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            lr_sched.step()
            ema.step(params)
            step += 1
            seen += cfg.unet_batch
            elapsed = time.time() - run_start
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            if progress.tick(step, loss=f"{running:.4f}", seen=seen, min=f"{elapsed / 60:.1f}"):
                _log(f"unet: checkpoint at step {step}, {seen} images, loss {running:.4f}")
    progress.close()
    save_checkpoint()
    return mark_stage_done(
        work,
        "unet",
        {
            "steps": step,
            "images_seen": seen,
            "minutes": round(elapsed / 60, 1),
            "seconds": round(elapsed, 1),
            "final_loss": running,
        },
    )


def build_model(cfg: BuildConfig, work: Path, out: Path, judge_out: Path) -> dict:
    """Run every stage (skipping finished ones) and copy the results to ``out`` and ``judge_out``."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "recipe.json"
    # Budgets may change between resumed runs; everything else decides the weights.
    budgets = ("unet_minutes", "unet_steps", "checkpoint_minutes")
    identity = {k: v for k, v in asdict(cfg).items() if k not in budgets}
    if saved.is_file():
        before = {k: v for k, v in json.loads(saved.read_text()).items() if k not in budgets}
        if before != identity:
            changed = sorted(k for k in identity if before.get(k) != identity[k])
            raise SaeuronError(
                f"{work} holds a run with a different recipe ({', '.join(changed)}); use a new --work folder"
            )
    write_json(saved, asdict(cfg))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    t0 = time.time()
    report = {"data": stage_data(cfg, work)}
    report["vae"] = stage_vae(cfg, work)
    report["judge"] = stage_judge(cfg, work)
    report["latents"] = stage_latents(cfg, work)
    report["unet"] = stage_unet(cfg, work)
    pipeline_src = work / "unet" / "pipeline"
    with atomic_dir(out) as tmp:
        shutil.copytree(pipeline_src, tmp, dirs_exist_ok=True)
        meta = json.loads((tmp / BUNDLED_CONFIG_NAME).read_text())
        meta["build_report"] = report
        write_json(tmp / BUNDLED_CONFIG_NAME, meta)
    with atomic_dir(judge_out) as tmp:
        shutil.copytree(work / "judge" / "model", tmp, dirs_exist_ok=True)
    report["seconds_this_run"] = round(time.time() - t0, 1)
    return report
