"""The MiniCanvas unlearning benchmark (`saeuron evaluate`): UA / IRA / CRA, fidelity, cost.

For every removed concept, images of every (object, style) pair and every unstyled prompt are
generated at held-out seeds with the concept removed, and judged (METHOD section 6):

- UA  = 1 - judge accuracy on the removed concept's images (its own kind)
- IRA = judge accuracy (same kind) on the other concepts' images
- CRA = judge accuracy of the other kind. Two definitions, both reported: ``CRA`` on styled
  images (UnlearnCanvas) and ``CRA_unstyled`` on the unstyled prompts "An image of {object}."
  (what the reference code measures for styles).

Fidelity: a Frechet distance between retained-concept images and MiniCanvas renders of the same
pairs, in the judge's penultimate feature space ("judge-FD"; not FID, which uses Inception), and
the mean absolute pixel change of retained images against the un-edited model (collateral).
"""

from __future__ import annotations

import csv
import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import minicanvas as mc
from .errors import SaeuronError
from .evaluation import JudgedImage, accuracy, judge_images, removal_metrics, to_uint8
from .interventions import apply_interventions
from .io import atomic_path, write_json
from .pipeline import generate_jobs

METHODS = ("none", "saeuron")
DOMAINS = ("style", "object", "both")
PAPER = {  # SD v1.5 on UnlearnCanvas (METHOD section 6), for side-by-side context only
    "style": {"UA": 0.9676, "IRA": 0.9870, "CRA": 0.9810},
    "object": {"UA": 0.8423, "IRA": 0.9005, "CRA": 0.7678},
    "memory_gb": 2.8,
    "storage_gb": 0.2,
}


@dataclass(frozen=True)
class EvalPlan:
    """What to evaluate."""

    method: str
    domain: str
    concepts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance: float
    multi: tuple[tuple[str, ...], ...] = ()
    """Concept sets removed together (multi-concept rows)."""

    def __post_init__(self):
        if self.method not in METHODS:
            raise SaeuronError(f"unknown method {self.method!r}; methods: {', '.join(METHODS)}")
        if self.domain not in DOMAINS:
            raise SaeuronError(f"unknown domain {self.domain!r}; domains: {', '.join(DOMAINS)}")
        for c in self.concepts + tuple(c for group in self.multi for c in group):
            mc.concept_kind(c)
        for s in self.seeds:
            if mc.split_of(s) != "heldout":
                raise SaeuronError(f"seed {s} is in the {mc.split_of(s)!r} split; evaluation uses held-out seeds {mc.SPLITS['heldout']} only")
        if not self.seeds:
            raise SaeuronError("no seeds to evaluate")


def default_concepts(domain: str) -> tuple[str, ...]:
    return (mc.STYLES if domain in ("style", "both") else ()) + (mc.OBJECTS if domain in ("object", "both") else ())


def protocol_prompts() -> list[tuple[str, str | None]]:
    """Every (object, style) pair, then every unstyled prompt (style None)."""
    return mc.all_pairs() + [(o, None) for o in mc.OBJECTS]


@dataclass
class ImageSet:
    records: list[JudgedImage]
    images: np.ndarray  # uint8 [N, H, W, 3]
    features: torch.Tensor  # judge penultimate features [N, D]
    seconds: float = 0.0


def generate_protocol(pipe, judge, seeds, steps: int, guidance: float, batch_size: int = 24) -> ImageSet:
    """Generate and judge the whole protocol once (under whatever hooks are active)."""
    prompts = protocol_prompts()
    jobs = [(mc.prompt(o, s), seed) for o, s in prompts for seed in seeds]
    t0 = time.perf_counter()
    out = generate_jobs(pipe, jobs, steps, guidance, batch_size=batch_size, output_type="np")
    seconds = time.perf_counter() - t0
    images = to_uint8(out)
    records, feats = judge_images(judge, images, prompts, seeds)
    return ImageSet(records, images, feats, seconds)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets [N, D]."""
    if len(a) < 2 or len(b) < 2:
        raise SaeuronError("a Frechet distance needs at least two samples per set")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    # Tr((S_a S_b)^(1/2)) = sum of sqrt of eigenvalues of S_a^(1/2) S_b S_a^(1/2) (symmetric PSD)
    w, v = torch.linalg.eigh(s_a)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    mid = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * mid)


def reference_features(judge, pairs, n_per_pair: int) -> torch.Tensor:
    """Judge features of MiniCanvas renders of ``pairs`` (held-out seeds far from generation's)."""
    seeds = mc.split_seeds("heldout", n_per_pair, offset=900_000)
    renders = np.stack([mc.render(o, s, seed) for o, s in pairs for seed in seeds])
    return judge.classify(renders)["features"]


def _retained(records, removed: tuple[str, ...]) -> np.ndarray:
    return np.array([r.style not in removed and r.object_name not in removed and r.style is not None for r in records])


def concept_row(concept_set: tuple[str, ...], edited: ImageSet, plain: ImageSet, ref_feats: torch.Tensor) -> dict:
    """Metrics for removing ``concept_set`` together."""
    row: dict = {"removed": list(concept_set)}
    for c in concept_set:
        m = removal_metrics([r for r in edited.records if r.style not in concept_set or r.style == c], c) if len(concept_set) > 1 else removal_metrics(edited.records, c)
        row.setdefault("per_concept", {})[c] = m
    kinds = {mc.concept_kind(c) for c in concept_set}
    retained = [r for r in edited.records if r.style not in concept_set and r.object_name not in concept_set]
    row["retain_style"] = accuracy([r for r in retained if r.style is not None], "style")
    row["retain_object"] = accuracy(retained, "object")
    if kinds == {"style"}:
        row["CRA_unstyled"] = accuracy([r for r in edited.records if r.style is None], "object")
    keep = _retained(edited.records, concept_set)
    row["judge_fd_retained"] = frechet_distance(edited.features[keep], ref_feats)
    row["collateral_mae"] = float(np.abs(edited.images[keep].astype(np.float32) - plain.images[keep].astype(np.float32)).mean() / 255)
    row["seconds_per_image"] = edited.seconds / len(edited.records)
    if len(concept_set) == 1:
        row.update(row["per_concept"][concept_set[0]])
    return row


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(pipe, bundle, judge, plan: EvalPlan, out: Path, log=print) -> dict:
    """Run ``plan``, write metrics.json / metrics.csv / table.md / report.html under ``out``."""
    t0 = time.time()
    log(f"reference (no edit): {len(protocol_prompts()) * len(plan.seeds)} images")
    plain = generate_protocol(pipe, judge, plan.seeds, plan.steps, plan.guidance)
    styled = [r for r in plain.records if r.style is not None]
    reference = {
        "style_accuracy": accuracy(styled, "style"),
        "object_accuracy": accuracy(styled, "object"),
        "object_accuracy_unstyled": accuracy([r for r in plain.records if r.style is None], "object"),
        "seconds_per_image": plain.seconds / len(plain.records),
    }
    ref_feats = reference_features(judge, mc.all_pairs(), 2)
    reference["judge_fd"] = frechet_distance(plain.features[_retained(plain.records, ())], ref_feats)
    rows, examples = [], {}
    if plan.method == "saeuron":
        sets = [(c,) for c in plan.concepts] + list(plan.multi)
        for concept_set in sets:
            ivs = bundle.unlearn(list(concept_set))
            with apply_interventions(pipe.unet, bundle.saes, ivs, stats=bundle.concept_stats(ivs)):
                edited = generate_protocol(pipe, judge, plan.seeds, plan.steps, plan.guidance)
            row = concept_row(concept_set, edited, plain, ref_feats)
            row["settings"] = {iv.point: iv.per_concept() for iv in ivs}
            rows.append(row)
            examples["+".join(concept_set)] = _example_strip(concept_set, plain, edited)
            log(f"removed {'+'.join(concept_set)}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)))
    summary = summarize(rows)
    result = {
        "plan": asdict(plan),
        "reference": reference,
        "rows": rows,
        "summary": summary,
        "cost": cost(bundle, plain.seconds / len(plain.records), [r["seconds_per_image"] for r in rows]),
        "paper": PAPER,
        "wall_seconds": round(time.time() - t0, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "cra_definitions": {"CRA": "other-kind accuracy on styled images (UnlearnCanvas)", "CRA_unstyled": "object accuracy on 'An image of {object}.' (reference code, styles only)"},
    }
    write_reports(result, examples, out)
    return result


def summarize(rows: list[dict]) -> dict:
    """Averages of UA / IRA / CRA over single-concept rows, per kind."""
    out = {}
    for kind in ("style", "object"):
        single = [r for r in rows if len(r["removed"]) == 1 and mc.concept_kind(r["removed"][0]) == kind]
        if not single:
            continue
        avg = {k: float(np.mean([r[k] for r in single])) for k in ("UA", "IRA", "CRA")}
        avg["average"] = float(np.mean(list(avg.values())))
        if kind == "style":
            avg["CRA_unstyled"] = float(np.mean([r["CRA_unstyled"] for r in single]))
        avg["judge_fd_retained"] = float(np.mean([r["judge_fd_retained"] for r in single]))
        avg["collateral_mae"] = float(np.mean([r["collateral_mae"] for r in single]))
        out[kind] = avg
    return out


def cost(bundle, plain_s: float, edited_s: list[float]) -> dict:
    """Extra memory (SAE weights + statistics held), extra storage (their files), extra time per image."""
    if bundle is None:
        return {}
    tensors = [p for sae in bundle.saes.values() for p in sae.parameters()]
    tensors += [st.concept_sums for st in bundle.stats.values()]
    return {
        "extra_memory_mb": sum(t.numel() * t.element_size() for t in tensors) / 2**20,
        "extra_storage_mb": bundle.storage_bytes() / 2**20,
        "extra_seconds_per_image": (float(np.mean(edited_s)) - plain_s) if edited_s else 0.0,
    }


def _example_strip(concept_set, plain: ImageSet, edited: ImageSet, n: int = 6) -> np.ndarray:
    """Before (top) / after (bottom) for up to n images showing the removed concepts."""
    idx = [i for i, r in enumerate(plain.records) if r.style in concept_set or r.object_name in concept_set][:: max(1, len(plain.records) // 200)][:n]
    return np.concatenate([np.concatenate(list(plain.images[idx]), 1), np.concatenate(list(edited.images[idx]), 1)], 0)


def markdown_table(result: dict) -> str:
    lines = ["| Domain | UA | IRA | CRA | CRA (unstyled) | avg | judge-FD (retained) |", "|---|---|---|---|---|---|---|"]
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    for kind, s in result["summary"].items():
        lines.append(f"| {kind} (ours, MiniCanvas) | {pct(s['UA'])} | {pct(s['IRA'])} | {pct(s['CRA'])} | {pct(s['CRA_unstyled']) if 'CRA_unstyled' in s else '-'} | {pct(s['average'])} | {s['judge_fd_retained']:.2f} |")
        p = PAPER[kind]
        lines.append(f"| {kind} (paper, SD1.5 UnlearnCanvas) | {pct(p['UA'])} | {pct(p['IRA'])} | {pct(p['CRA'])} | - | {pct(sum(p.values()) / 3)} | - |")
    ref = result["reference"]
    lines += ["", f"Un-edited reference: style accuracy {pct(ref['style_accuracy'])}, object accuracy {pct(ref['object_accuracy'])} (unstyled prompts: {pct(ref['object_accuracy_unstyled'])}), judge-FD {ref['judge_fd']:.2f}."]
    if result["rows"]:
        lines += ["", "| Removed | UA | IRA | CRA | retain style | retain object | collateral MAE |", "|---|---|---|---|---|---|---|"]
        for r in result["rows"]:
            ua = " / ".join(f"{c}: {pct(m['UA'])}" for c, m in r["per_concept"].items())
            ira = " / ".join(pct(m["IRA"]) for m in r["per_concept"].values())
            cra = " / ".join(pct(m["CRA"]) for m in r["per_concept"].values())
            lines.append(f"| {'+'.join(r['removed'])} | {ua} | {ira} | {cra} | {pct(r['retain_style'])} | {pct(r['retain_object'])} | {r['collateral_mae']:.4f} |")
    return "\n".join(lines) + "\n"


def write_reports(result: dict, examples: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result)
    with atomic_path(out / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["removed", "concept", "UA", "IRA", "CRA", "CRA_unstyled", "retain_style", "retain_object", "judge_fd_retained", "collateral_mae", "seconds_per_image"])
        for r in result["rows"]:
            for c, m in r["per_concept"].items():
                w.writerow(["+".join(r["removed"]), c, m["UA"], m["IRA"], m["CRA"], r.get("CRA_unstyled", ""), r["retain_style"], r["retain_object"], r["judge_fd_retained"], r["collateral_mae"], r["seconds_per_image"]])
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(markdown_table(result))
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(html_report(result, examples))


def html_report(result: dict, examples: dict) -> str:
    import base64
    import io

    from PIL import Image

    parts = ["<html><head><meta charset='utf-8'><title>SAeUron MiniCanvas benchmark</title></head><body>", "<h1>SAeUron on MiniCanvas</h1>"]
    try:
        import plotly.graph_objects as go

        single = [r for r in result["rows"] if len(r["removed"]) == 1]
        if single:
            fig = go.Figure()
            names = [r["removed"][0] for r in single]
            for metric in ("UA", "IRA", "CRA"):
                fig.add_bar(name=metric, x=names, y=[r[metric] for r in single])
            fig.update_layout(barmode="group", title="Per-concept UA / IRA / CRA", yaxis_range=[0, 1])
            parts.append(fig.to_html(full_html=False, include_plotlyjs="cdn"))
    except ImportError:
        parts.append("<p>(install plotly for charts)</p>")
    parts.append("<pre>" + markdown_table(result) + "</pre>")
    for name, strip in examples.items():
        buf = io.BytesIO()
        Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.NEAREST).save(buf, format="PNG")
        parts.append(f"<h3>{name}: before (top) / after (bottom)</h3><img src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>")
    parts.append("<h2>Settings</h2><pre>" + json.dumps({k: result[k] for k in ("plan", "cost", "wall_seconds", "peak_rss_mb")}, indent=2) + "</pre></body></html>")
    return "\n".join(parts)
