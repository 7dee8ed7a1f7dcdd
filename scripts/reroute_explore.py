"""The exploration prototype of ``Reroute`` (issue 18), kept to reproduce results/protocol/reroute.md's
exploration rows; the library's ``saeuron_core/reroute.py`` is what ships and what the sweep measured.

On tokens where the concept's selected latents fire (the SAE at the kind's point), the output of
each named cross-attention block becomes the same block run under a counterfactual text context
(an anchor concept's prompt), conditional CFG rows only:  out' = out + s * mask * (cf - out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from style_candidates import METRICS, score4, strip  # noqa: E402

from saeuron_core import minicanvas as mc  # noqa: E402
from saeuron_core.hooks import resolve_point, to_tokens  # noqa: E402
from saeuron_core.io import write_json  # noqa: E402
from saeuron_core.minicanvas.evaluation import judge_decorrelated, removal_counts, removal_pairs  # noqa: E402
from saeuron_core.minicanvas.judge import Judge  # noqa: E402
from saeuron_core.paths import ASSETS  # noqa: E402
from saeuron_core.pipeline import load_pipeline, model_info  # noqa: E402
from saeuron_core.scoring import SCORES, mean_activation_all, select, tau_for_count  # noqa: E402
from saeuron_core.unlearning import SaeBundle  # noqa: E402

BLOCKS = {
    "1": ("up_blocks.1.attentions.1",),
    "12": ("up_blocks.1.attentions.1", "up_blocks.2.attentions.0"),
    "up": (
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
        "up_blocks.2.attentions.0",
        "up_blocks.2.attentions.1",
    ),
    "d": (
        "down_blocks.1.attentions.0",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
        "up_blocks.2.attentions.0",
    ),
    "all": (
        "down_blocks.0.attentions.0",
        "down_blocks.1.attentions.0",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
        "up_blocks.2.attentions.0",
        "up_blocks.2.attentions.1",
    ),
}


def encode(pipe, text: str) -> torch.Tensor:
    ids = pipe.tokenizer(
        [text], padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def nearest_other(stats, concept: str) -> str:
    means = F.normalize(stats.means.float(), dim=-1)  # [C, T, L]
    c = stats.index(concept)
    sim = (means * means[c]).sum(-1).mean(-1)
    sim[c] = -2
    return stats.concepts[int(sim.argmax())]


def swap_reference(pipe, concept: str, anchor: str):
    """Where the concept word sits in its reference prompts, its mean hidden state, and the mean
    change of every hidden state from that word on when the word becomes the anchor's."""
    objs = mc.OBJECTS
    tok = pipe.tokenizer
    texts_c = [mc.prompt(o, concept) for o in objs]
    texts_a = [mc.prompt(o, anchor) for o in objs]
    ids_c = tok(texts_c, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    ids_a = tok(texts_a, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        e_c, e_a = pipe.text_encoder(ids_c)[0], pipe.text_encoder(ids_a)[0]
    p = int((ids_c[0] != ids_a[0]).nonzero()[0])
    return e_c[:, p].mean(0), (e_a - e_c)[:, p:].mean(0)


def swapped(ctx, h_c, delta, fallback, threshold=0.8):
    sims = F.cosine_similarity(ctx, h_c[None, None], dim=-1)  # [B, L]
    pos = sims.argmax(1)
    out = ctx.clone()
    for b in range(ctx.shape[0]):
        p = int(pos[b])
        if sims[b, p] >= threshold:
            k = ctx.shape[1] - p
            out[b, p:] = ctx[b, p:] + delta[:k]
        elif fallback is not None and _FALLBACK[0]:
            out[b] = fallback[0]
    return out


def _found(ctx, h_c, threshold=0.8):
    return F.cosine_similarity(ctx, h_c[None, None], dim=-1).amax(1) >= threshold


@contextlib.contextmanager
def reroute(
    pipe, bundle, concept, anchor_text, blocks, flag_rule, strength, count=None, anchor_kind="near", anchor_name=None
):
    point = bundle.points_of_kind[bundle.kind_of(concept)][0]
    sae = bundle.saes[point]
    stats = bundle.stats[point].concept_stats(bundle.kind_of(concept))
    n = count or int(bundle.default_entry(concept)["latents_per_step"])
    ids_per_row = select(SCORES["paper"](stats, concept), tau_for_count(n, sae.num_latents))
    thr = mean_activation_all(stats).float()
    ctx_cf = encode(pipe, anchor_text)
    swap = swap_reference(pipe, concept, anchor_name) if anchor_kind == "swap" else None
    state = {"t": None, "mask": None, "busy": False}
    global _STATE
    _STATE = state
    handles = []

    def read_t(_m, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        t = float(t.flatten()[0]) if torch.is_tensor(t) else float(t)
        if state["t"] is None or t > state["t"]:  # a new generation: no mask from a previous step
            state["mask"] = None
            state["hist"] = []
        state["t"] = t

    def hook(name):
        def fn(module, args, kwargs, output):
            if state["busy"]:
                return None
            out = output[0] if isinstance(output, tuple) else output.sample
            b = out.shape[0]
            cond = slice(b // 2, b)
            x = out[cond]
            _, ch, h, w = x.shape
            if name == point:
                row = stats.row_for_timestep(state["t"])
                ids = ids_per_row[row]
                acts, idx = sae.encode(to_tokens(x).reshape(-1, ch))
                hits = idx[:, :, None] == ids[None, None, :]
                z = (hits * acts[:, :, None]).sum(1)  # [N, n]
                gated = flag_rule in ("mean", "img") or flag_rule.startswith("run")
                lim = thr[row, ids] if gated else torch.zeros(len(ids))
                state["mask"] = (z > lim).any(1).float().reshape(x.shape[0], 1, h, w)
                state["tokmask"] = state["mask"].clone()
                if flag_rule.startswith("run"):
                    frac = state["mask"].mean((1, 2, 3))  # [B]
                    hist = state.setdefault("hist", [])
                    hist.append(frac)
                    running = torch.stack(hist).mean(0)
                    state["mask"] = (
                        (running >= float(flag_rule[3:]))[:, None, None, None].float().expand_as(state["mask"]).clone()
                    )
                if flag_rule == "img":
                    state["mask"] = state["mask"].amax((1, 2, 3), keepdim=True).expand_as(state["mask"]).clone()
                if flag_rule == "all":
                    state["mask"] = torch.ones_like(state["mask"])
                state.setdefault("cover", []).append(float(state["mask"].mean()))
            if state["mask"] is None:
                return None
            mask = state["mask"]
            if mask.shape[-1] != w:
                mask = F.interpolate(mask, size=(h, w), mode="nearest")
            if not mask.any():
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            kw = dict(kwargs)
            kw.pop("hidden_states", None)
            if swap is None:
                kw["encoder_hidden_states"] = ctx_cf.expand(x.shape[0], -1, -1)
            else:
                kw["encoder_hidden_states"] = swapped(kwargs["encoder_hidden_states"][cond], *swap, ctx_cf)
            state["busy"] = True
            try:
                cf = module(hidden[cond], *args[1:], **kw)
            finally:
                state["busy"] = False
            cf = cf[0] if isinstance(cf, tuple) else cf.sample
            new = out.clone()
            if swap is not None and _FALLBACK[1]:
                found = _found(kwargs["encoder_hidden_states"][cond], swap[0])
                tok = state["tokmask"]
                if tok.shape[-1] != w:
                    tok = F.interpolate(tok, size=(h, w), mode="nearest")
                mask = torch.where(found[:, None, None, None], mask, tok)
            new[cond] = x + strength * mask * (cf - x)
            if isinstance(output, tuple):
                return (new, *output[1:])
            output.sample = new
            return output

        return fn

    try:
        handles.append(pipe.unet.register_forward_pre_hook(read_t, with_kwargs=True))
        for name in blocks:
            handles.append(resolve_point(pipe.unet, name).register_forward_hook(hook(name), with_kwargs=True))
        yield
    finally:
        for h_ in handles:
            h_.remove()


_STATE: dict = {}
_FALLBACK = [True, False]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--candidates", required=True, help="cf-<anchor>-<blocks>-<flag>-s<strength>[-n<count>]")
    ap.add_argument("--concepts", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline("minicanvas")
    info = model_info(pipe, "minicanvas")
    bundle = SaeBundle.load(info)
    judge = Judge.load(ASSETS / "judge")
    bases = mc.split_seeds("sweep", args.seeds)
    steps, guidance = info.default_steps, info.default_guidance
    concepts = tuple(args.concepts.split(",")) if args.concepts else mc.STYLES
    path = out / "rows_style.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    done = {(r["candidate"], r["concept"]) for r in rows}
    plain = {}
    for name in args.candidates.split(","):
        parts = name.split("-")
        _, anchor_kind, blocks, flag = parts[:4]
        _FALLBACK[0] = "nf" not in anchor_kind
        _FALLBACK[1] = "tf" in anchor_kind
        fixed = "S" in anchor_kind
        anchor_kind = "swap" if anchor_kind.startswith("swap") else anchor_kind
        strength = float(parts[4][1:])
        count = int(parts[5][1:]) if len(parts) > 5 else None
        for concept in concepts:
            if (name, concept) in done:
                continue
            stats = bundle.stats[bundle.points_of_kind["style"][0]].concept_stats("style")
            anchor = nearest_other(stats, concept)
            if fixed:
                anchor = "gradient" if concept == "solid" else "solid"
            text = {"near": f"An image in {anchor} style.", "swap": f"An image in {anchor} style.", "empty": ""}[
                anchor_kind
            ]
            target, retain = removal_pairs(concept, 2)
            if concept not in plain:
                plain[concept] = judge_decorrelated(pipe, judge, target, bases, steps, guidance)[2]
            t0 = time.time()
            with reroute(pipe, bundle, concept, text, BLOCKS[blocks], flag, strength, count, anchor_kind, anchor):
                records, _, images = judge_decorrelated(pipe, judge, target + retain, bases, steps, guidance)
            counts = removal_counts(records, concept)
            print("mask cover", np.mean(_STATE.get("cover", [0])), flush=True)
            row = {
                "candidate": name,
                "concept": concept,
                "kind": "style",
                "anchor": text,
                **{m: counts[m].value for m in METRICS},
                "counts": {m: counts[m].as_dict() for m in METRICS},
                "seconds": round(time.time() - t0, 1),
            }
            row["score4"] = score4(row)
            rows.append(row)
            write_json(path, {"bases": bases, "steps": steps, "guidance": guidance, "rows": rows})
            strip(plain[concept], images[: len(plain[concept])]).save(out / "images" / f"{name}-{concept}.png")
            print(
                f"{name} {concept} ({text}): UA {row['UA']:.2f} IRA {row['IRA']:.2f} CRA {row['CRA']:.2f}"
                f" kept {row['kept_on_target']:.2f} ({row['seconds']} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
