"""Benchmark scores: one removal's metrics row (UA / IRA / CRA, kept_on_target, judge-FD,
collateral change), summaries over concepts, paired comparisons between methods, and costs."""

from __future__ import annotations

import numpy as np
import torch

from ..baselines.methods import Removal
from ..errors import SaeuronError
from ..intervals import Rate, paired_bootstrap
from . import dataset as mc
from .benchmark_attack import similarity_recovered
from .evaluation import accuracy, removal_counts
from .image_sets import ImageSet


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
        counts = (
            removal_counts([r for r in edited.records if r.style not in concept_set or r.style == c], c)
            if len(concept_set) > 1
            else removal_counts(edited.records, c)
        )
        m = {name: rate.value for name, rate in counts.items()}
        m["intervals"] = {name: rate.as_dict() for name, rate in counts.items()}
        row.setdefault("per_concept", {})[c] = m
    kinds = {mc.concept_kind(c) for c in concept_set}
    retained = [r for r in edited.records if r.style not in concept_set and r.object_name not in concept_set]
    row["retain_style"] = accuracy([r for r in retained if r.style is not None], "style")
    row["retain_object"] = accuracy(retained, "object")
    if kinds == {"style"}:
        row["CRA_unstyled"] = accuracy([r for r in edited.records if r.style is None], "object")
    keep = _retained(edited.records, concept_set)
    row["judge_fd_retained"] = frechet_distance(edited.features[keep], ref_feats)
    row["collateral_mae"] = float(
        np.abs(edited.images[keep].astype(np.float32) - plain.images[keep].astype(np.float32)).mean() / 255
    )
    row["seconds_per_image"] = edited.seconds / len(edited.records)
    if len(concept_set) == 1:
        row.update(row["per_concept"][concept_set[0]])
    return row


def compare_methods(by_method: dict, reference: str = "saeuron") -> dict:
    """Paired bootstrap over concepts of ``reference`` minus each other method, per kind, on the
    per-concept average and on UA / IRA / CRA (both methods saw the same images' seeds)."""
    out: dict = {}
    if reference not in by_method:
        return out
    for other, res in by_method.items():
        if other == reference:
            continue
        for kind in ("style", "object"):
            mine = {r["removed"][0]: r for r in _single_rows(by_method[reference]["rows"], kind)}
            theirs = {r["removed"][0]: r for r in _single_rows(res["rows"], kind)}
            shared = [c for c in mine if c in theirs]
            if not shared:
                continue
            entry = {
                "concepts": shared,
                "average": paired_bootstrap(
                    [concept_average(mine[c]) for c in shared], [concept_average(theirs[c]) for c in shared]
                ),
            }
            for metric in ("UA", "IRA", "CRA", "kept_on_target"):
                if all(metric in mine[c] and metric in theirs[c] for c in shared):
                    entry[metric] = paired_bootstrap(
                        [mine[c][metric] for c in shared], [theirs[c][metric] for c in shared]
                    )
            out.setdefault(f"{reference} - {other}", {})[kind] = entry
    return out


def _single_rows(rows: list[dict], kind: str) -> list[dict]:
    return [r for r in rows if len(r["removed"]) == 1 and mc.concept_kind(r["removed"][0]) == kind]


def concept_average(row: dict) -> float:
    """(UA + IRA + CRA) / 3 of one removal: the per-concept number methods are compared on."""
    return float(np.mean([row[k] for k in ("UA", "IRA", "CRA")]))


def summarize(rows: list[dict]) -> dict:
    """Averages of UA / IRA / CRA / kept_on_target (and attacked UA) over single-concept rows, per kind.

    ``intervals``: Wilson 95% intervals of UA / IRA / CRA / unrecognisable / kept_on_target pooled over the
    concepts' images (every concept has as many images, so the pooled rate is the mean), and a
    bootstrap interval over concepts of the average (between-concept spread included)."""
    out = {}
    for kind in ("style", "object"):
        single = _single_rows(rows, kind)
        if not single:
            continue
        avg = {k: float(np.mean([r[k] for r in single])) for k in ("UA", "IRA", "CRA")}
        avg["average"] = float(np.mean(list(avg.values())))
        pooled = {}
        for name in ("UA", "IRA", "CRA", "unrecognisable", "kept_on_target"):
            parts = [r["intervals"][name] for r in single if name in r.get("intervals", {})]
            if parts:
                pooled[name] = Rate(sum(p["k"] for p in parts), sum(p["n"] for p in parts)).as_dict()
        averages = [concept_average(r) for r in single]
        pooled["average"] = paired_bootstrap(averages, [0.0] * len(averages))
        avg["intervals"] = pooled
        for name in ("unrecognisable", "kept_on_target"):
            if all(name in r for r in single):
                avg[name] = float(np.mean([r[name] for r in single]))
        if kind == "style":
            avg["CRA_unstyled"] = float(np.mean([r["CRA_unstyled"] for r in single]))
        avg["judge_fd_retained"] = float(np.mean([r["judge_fd_retained"] for r in single]))
        avg["collateral_mae"] = float(np.mean([r["collateral_mae"] for r in single]))
        attacked = [r["attack"] for r in single if "attack" in r]
        if attacked:
            avg["UA_attack_before"] = float(np.mean([a["UA_before"] for a in attacked]))
            avg["UA_attack_after"] = float(np.mean([a["UA_after"] for a in attacked]))
            if all("p_concept_after" in a for a in attacked):
                for key in (
                    "p_concept_before",
                    "p_concept_after",
                    "p_concept_target",
                    "similarity_before",
                    "similarity_after",
                ):
                    avg[f"attack_{key}"] = float(np.mean([a[key] for a in attacked]))
                avg["attack_similarity_recovered"] = similarity_recovered(
                    avg["attack_similarity_before"], avg["attack_similarity_after"]
                )
                avg["attack_readings"] = {
                    r: sum(a["reading"] == r for a in attacked) for r in sorted({a["reading"] for a in attacked})
                }
        out[kind] = avg
    return out


def cost(removals: list[Removal], plain_s: float, edited_s: list[float], edited: bool = True) -> dict:
    """Extra memory and storage (largest over removals), set-up seconds (mean), extra s/image."""
    if not removals:
        return {}
    return {
        "extra_memory_mb": max(r.extra_memory_bytes for r in removals) / 2**20,
        "extra_storage_mb": max(r.extra_storage_bytes for r in removals) / 2**20,
        "setup_seconds": float(np.mean([r.setup_seconds for r in removals])),
        "extra_seconds_per_image": (float(np.mean(edited_s)) - plain_s) if edited and edited_s else 0.0,
    }
