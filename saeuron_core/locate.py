"""Where a concept enters a U-Net: causal localisation over its cross-attention blocks.

Text reaches a ``UNet2DConditionModel`` only through the cross-attention of its transformer
blocks (down, mid and up). For a concept word, each block is tested twice ("text-swap
patching"):

- **wrong here**: every block reads the right prompt except this one, which reads a prompt
  with the concept word swapped. If the concept disappears, this block is *necessary*.
- **right here**: every block reads the swapped prompt except this one, which reads the right
  one. If the concept appears, this block is *sufficient*.

Without a judge the effect is measured on pixels and on the block itself: the image change
against the right-prompt image, as a share of the change that swapping the word in every
block makes, and the relative change of the block's own output. With a judge (a callable that
says, per image, whether it shows the intended concept) the share of images that show it.

The benchmark-specific parts (which prompts, which judge) live with the benchmark; this module
needs only a pipeline, prompt pairs and seeds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import SaeuronError

CONDITIONS = ("wrong_here", "right_here")
CHART_FILE = "heatmap.html"
CHART_NEEDS_APP = (
    f"{CHART_FILE} not written: the chart needs plotly, from the app extra (pip install 'saeuron-explorer[app]')"
)


def chart_available() -> bool:
    """Whether plotly (the ``app`` extra) can be imported here: asked before any computation,
    so a core install learns it at once and still gets locate.json and locate.md."""
    return importlib.util.find_spec("plotly") is not None


@dataclass(frozen=True)
class SwapCase:
    """One prompt pair: the concept's prompt and the same prompt with the concept word swapped."""

    kind: str
    """Concept kind this case tests (e.g. "object", "style")."""
    right: str
    """Prompt with the concept, e.g. "An image of star in dots style."."""
    wrong: str
    """The same prompt with the concept word swapped, e.g. "An image of heart in dots style."."""
    label: str
    """The concept the right prompt shows (what a judge should see)."""
    seed: int


def cross_attention_blocks(unet) -> list[str]:
    """Names of the U-Net's transformer blocks with cross-attention, in the order the U-Net runs
    them (down, mid, up)."""
    names = []
    for name, module in unet.named_modules():
        blocks = getattr(module, "transformer_blocks", None)
        if blocks is None or not name:
            continue
        if any(getattr(getattr(b, "attn2", None), "is_cross_attention", False) for b in blocks):
            names.append(name)
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(
        names, key=lambda n: (order.get(n.split(".")[0], 3), [int(p) if p.isdigit() else 0 for p in n.split(".")[1:]])
    )


def check_blocks(unet, blocks: Sequence[str] | None) -> list[str]:
    """``blocks`` validated against the U-Net (all cross-attention blocks when None)."""
    valid = cross_attention_blocks(unet)
    if not valid:
        raise SaeuronError("this U-Net has no cross-attention blocks: text cannot be located in it")
    if blocks is None:
        return valid
    wanted = [b.removeprefix("unet.") for b in blocks]
    bad = [b for b in wanted if b not in valid]
    if bad:
        raise SaeuronError(f"not a cross-attention block: {', '.join(bad)}; valid blocks: {', '.join(valid)}")
    if not wanted:
        raise SaeuronError("no block to test")
    return wanted


def _encode(pipe, prompts: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        embeds, _ = pipe.encode_prompt(prompts, pipe.device, 1, False)
    return embeds


@contextlib.contextmanager
def text_override(unet, blocks: Sequence[str], original: torch.Tensor, replacement: torch.Tensor) -> Iterator[None]:
    """Inside the context, ``blocks`` read ``replacement`` wherever the U-Net passes a row of
    ``original`` as text (rows are matched by value, so any CFG batch order works; the
    unconditional rows pass through). Hooks are removed on exit, also on errors."""
    if original.shape != replacement.shape:
        raise SaeuronError(
            f"text override needs equal shapes, got {tuple(original.shape)} and {tuple(replacement.shape)}"
        )
    modules = dict(unet.named_modules())

    def hook(module, args, kwargs):
        ehs = kwargs.get("encoder_hidden_states")
        if ehs is None:
            return None
        ref = original.to(ehs.device, ehs.dtype)
        new = ehs.clone()
        for r in range(ehs.shape[0]):
            match = (ref - ehs[r]).flatten(1).abs().amax(1) <= 1e-6
            if match.any():
                new[r] = replacement[int(match.nonzero()[0])].to(ehs.device, ehs.dtype)
        return args, {**kwargs, "encoder_hidden_states": new}

    handles = []
    try:
        for b in blocks:
            handles.append(modules[b].register_forward_pre_hook(hook, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _capture(unet, block: str, into: list) -> Iterator[None]:
    module = dict(unet.named_modules())[block]

    def hook(module, args, output):
        x = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        into.append(x.detach().float().clone())

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _generate(pipe, embeds: torch.Tensor, seeds: list[int], steps: int, guidance: float) -> np.ndarray:
    negative = _encode(pipe, [""] * len(seeds))
    with torch.inference_mode():
        out = pipe(
            prompt_embeds=embeds,
            negative_prompt_embeds=negative,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            output_type="np",
        )
    return np.clip(np.stack(out.images), 0, 1)


def locate(
    pipe,
    cases: Sequence[SwapCase],
    steps: int,
    guidance: float,
    blocks: Sequence[str] | None = None,
    shows: Callable[[np.ndarray, list[str], str], list[bool]] | None = None,
    batch_size: int = 16,
    log: Callable[[str], None] | None = None,
    on_kind: Callable[[dict], None] | None = None,
) -> dict:
    """Text-swap patching of every block in ``blocks`` (default: all cross-attention blocks)
    for every kind in ``cases``.

    ``shows(images uint8 [N, H, W, 3], labels, kind)`` -> per image, does it show its label?
    Returns a JSON-ready table: per kind, the reference conditions (right / wrong prompt in every
    block) and, per block and condition, ``image_change`` (mean absolute pixel change against
    the right-prompt image divided by that of the all-wrong image), ``output_change`` (relative
    L2 change of the block's own output, all steps) and, with a judge, ``shows`` (share of
    images showing the intended concept). ``on_kind(partial result)`` runs after each kind
    (to write what is done so far: a long run keeps its finished kinds).
    """
    blocks = check_blocks(pipe.unet, blocks)
    if not cases:
        raise SaeuronError("no prompt pairs to locate with")
    if batch_size < 1:
        raise SaeuronError(f"batch_size must be >= 1, got {batch_size}")
    t0 = time.time()
    result: dict = {"blocks": blocks, "conditions": list(CONDITIONS), "steps": steps, "guidance": guidance, "kinds": {}}
    kinds = list(dict.fromkeys(c.kind for c in cases))
    for kind in kinds:
        chosen = [c for c in cases if c.kind == kind]
        sums = {"right": [], "wrong": [], **{(b, cond): [] for b in blocks for cond in CONDITIONS}}
        out_change = {(b, cond): [] for b in blocks for cond in CONDITIONS}
        shown: dict = {k: [] for k in sums}
        for i in range(0, len(chosen), batch_size):
            chunk = chosen[i : i + batch_size]
            seeds = [c.seed for c in chunk]
            right = _encode(pipe, [c.right for c in chunk])
            wrong = _encode(pipe, [c.wrong for c in chunk])
            images = {}
            base_out = {}
            with contextlib.ExitStack() as stack:
                for b in blocks:
                    base_out[b] = []
                    stack.enter_context(_capture(pipe.unet, b, base_out[b]))
                images["right"] = _generate(pipe, right, seeds, steps, guidance)
            images["wrong"] = _generate(pipe, wrong, seeds, steps, guidance)
            for b in blocks:
                for cond in CONDITIONS:
                    base, here = (right, wrong) if cond == "wrong_here" else (wrong, right)
                    captured: list = []
                    with text_override(pipe.unet, [b], base, here), _capture(pipe.unet, b, captured):
                        images[(b, cond)] = _generate(pipe, base, seeds, steps, guidance)
                    if cond == "wrong_here":
                        num = sum(float((c - r).pow(2).sum()) for c, r in zip(captured, base_out[b]))
                        den = sum(float(r.pow(2).sum()) for r in base_out[b])
                        out_change[(b, cond)].append(num / max(den, 1e-12))
            full = np.abs(images["wrong"] - images["right"]).reshape(len(chunk), -1).mean(1)
            for key, imgs in images.items():
                change = np.abs(imgs - images["right"]).reshape(len(chunk), -1).mean(1)
                sums[key].append((change, full))
                if shows is not None:
                    shown[key] += list(shows((imgs * 255 + 0.5).astype(np.uint8), [c.label for c in chunk], kind))
            if log:
                log(
                    f"locate {kind}: {min(i + batch_size, len(chosen))}/{len(chosen)} prompt pairs, "
                    f"{time.time() - t0:.0f} s"
                )

        def share(key):
            change = np.concatenate([c for c, _ in sums[key]])
            full = np.concatenate([f for _, f in sums[key]])
            return float(change.sum() / max(full.sum(), 1e-12))

        def rate(key):
            return float(np.mean(shown[key])) if shown[key] else None

        entry = {
            "cases": len(chosen),
            "right": {"shows": rate("right")},
            "wrong": {"shows": rate("wrong"), "image_change": 1.0},
            "per_block": {},
        }
        for b in blocks:
            entry["per_block"][b] = {}
            for cond in CONDITIONS:
                cell = {"image_change": share((b, cond)), "shows": rate((b, cond))}
                if cond == "wrong_here":
                    cell["output_change"] = float(np.mean(out_change[(b, cond)]) ** 0.5)
                entry["per_block"][b][cond] = cell
        result["kinds"][kind] = entry
        if on_kind is not None:
            on_kind(
                {
                    **result,
                    "seconds": round(time.time() - t0, 1),
                    "judged": shows is not None,
                    "partial": len(result["kinds"]) < len(kinds),
                }
            )
    result["seconds"] = round(time.time() - t0, 1)
    result["cases"] = [asdict(c) for c in cases]
    result["judged"] = shows is not None
    return result


def heatmap_html(result: dict, title: str = "Where concepts enter the U-Net") -> str:
    """A plotly heatmap: rows = blocks, columns = (kind, condition); the judge's share of images
    showing the intended concept when judged, else the image change share."""
    if not chart_available():
        raise SaeuronError(CHART_NEEDS_APP)
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    kinds = list(result["kinds"])
    judged = result.get("judged", False)
    metric = "shows" if judged else "image_change"
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=kinds, shared_yaxes=True)
    for i, kind in enumerate(kinds, start=1):
        entry = result["kinds"][kind]
        z = [[entry["per_block"][b][cond][metric] for cond in CONDITIONS] for b in result["blocks"]]
        text = [[f"{v:.2f}" if v is not None else "-" for v in row] for row in z]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=list(CONDITIONS),
                y=result["blocks"],
                zmin=0,
                zmax=1,
                colorscale="Viridis",
                text=text,
                texttemplate="%{text}",
                showscale=i == len(kinds),
            ),
            row=1,
            col=i,
        )
    what = (
        "share of images the judge finds showing the intended concept"
        if judged
        else "image change / change of swapping the word everywhere"
    )
    refs = (
        "; ".join(
            f"{k}: right prompt {_fmt(e['right']['shows'])}, swapped everywhere {_fmt(e['wrong']['shows'])}"
            for k, e in result["kinds"].items()
        )
        if judged
        else ""
    )
    fig.update_layout(
        title=f"{title}<br><sub>{what}{'. ' + refs if refs else ''}</sub>",
        height=120 + 60 * len(result["blocks"]),
        width=420 * len(kinds) + 200,
    )
    return fig.to_html(full_html=True, include_plotlyjs="cdn")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown_table(result: dict) -> str:
    """The table as markdown: per kind, block x condition."""
    judged = result.get("judged", False)
    lines = []
    for kind, entry in result["kinds"].items():
        lines += [f"#### {kind} ({entry['cases']} prompt pairs)", ""]
        if judged:
            lines += [
                f"Right prompt in every block: {_fmt(entry['right']['shows'])} show the {kind}; swapped word in every "
                f"block: {_fmt(entry['wrong']['shows'])}.",
                "",
            ]
        lines += [
            "| block | wrong word here only: shows | image change | block output change | right word here only: "
            "shows | image change |",
            "|---|---|---|---|---|---|",
        ]
        for b, cells in entry["per_block"].items():
            w, r = cells["wrong_here"], cells["right_here"]
            lines.append(
                f"| {b} | {_fmt(w['shows'])} | {w['image_change']:.2f} | {w['output_change']:.2f} | "
                f"{_fmt(r['shows'])} | {r['image_change']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_locate(result: dict, out: Path, chart: bool | None = None) -> list[Path]:
    """Write locate.json, locate.md and, with ``chart``, the plotly heatmap into ``out``; returns
    the files written. ``chart=None`` draws it when plotly is importable (``chart_available``),
    so a core install without the ``app`` extra keeps the table; ``chart=True`` requires it."""
    from .io import atomic_path, write_json

    if chart is None:
        chart = chart_available()
    html = heatmap_html(result) if chart else None  # refused here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "locate.json", out / "locate.md"]
    write_json(written[0], result)
    with atomic_path(written[1]) as tmp:
        tmp.write_text(markdown_table(result))
    if html is not None:
        written.append(out / CHART_FILE)
        with atomic_path(written[-1]) as tmp:
            tmp.write_text(html)
    return written
