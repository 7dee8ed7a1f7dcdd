"""What an Unlearn grid holds (its cells and per-concept counts) and how it is tabulated and
exported: the verdict and metric tables, CSV / JSON export, and the same for the grid measured
without a judge (image and feature change). ``unlearn_grid`` computes the grids."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from saeuron_core import minicanvas as mc
from saeuron_core.intervals import wilson
from saeuron_core.interventions import Intervention

from .formatting import percent
from .recipes import intervention_to_dict
from .unlearn_change import ChangeGrid, removal_settings


@dataclass(frozen=True)
class GridCell:
    object_name: str
    style: str
    role: str
    """"target" (shows a removed concept) or "retained"."""
    before: np.ndarray
    after: np.ndarray
    before_verdict: tuple[str, str]
    """(object, style) the judge sees in ``before``."""
    after_verdict: tuple[str, str]
    seed: int = 0
    before_confidence: tuple[float, float] = (1.0, 1.0)
    """The judge's top probability for its (object, style) verdict on ``before``."""
    after_confidence: tuple[float, float] = (1.0, 1.0)

    @property
    def prompt(self) -> str:
        return mc.prompt(self.object_name, self.style)


@dataclass(frozen=True)
class UnlearnGrid:
    concepts: tuple[str, ...]
    interventions: tuple[Intervention, ...]
    """SAeUron's interventions (``Unlearn``, or ``Reroute`` where the defaults table reroutes;
    empty for the weight-editing methods)."""
    seed: int
    cells: list[GridCell]
    metrics_before: dict[str, dict[str, float]]
    """Per removed concept: UA, IRA, CRA of the unedited images (UA there is the judge's error)."""
    metrics_after: dict[str, dict[str, float]]
    method: str = "saeuron"
    setup_seconds: float = 0.0
    """Wall time the removal took to set up (0 when it came from a cache)."""
    counts_before: dict[str, dict[str, tuple[int, int]]] | None = None
    """Per removed concept and metric: (successes, images) behind ``metrics_before``."""
    counts_after: dict[str, dict[str, tuple[int, int]]] | None = None
    seeds: tuple[int, ...] = ()
    """Every seed of the grid (each prompt at each); ``seed`` is the first."""
    variant: str | None = None
    """SAeUron's removal variant (``SaeBundle.variant``: the defaults table's, "paper" with tau and
    gamma given); None for the weight-editing methods."""

    def removals(self) -> dict[str, dict]:
        """Per concept, what SAeUron removed it with (``unlearn_change.removal_settings``)."""
        return removal_settings(self.interventions)


METRIC_NAMES = {
    "UA": "unlearning accuracy",
    "IRA": "in-domain retain accuracy",
    "CRA": "cross-domain retain accuracy",
    "kept_on_target": "the target images' other concept still seen",
}


def verdict_rows(grids: list[UnlearnGrid]) -> list[dict]:
    """One row per prompt and column of the matrix (before, then each method): what the judge saw."""
    rows = []
    for i, cell in enumerate(grids[0].cells):
        common = {
            "row": i,
            "role": cell.role,
            "prompt": cell.prompt,
            "seed": cell.seed,
            "object": cell.object_name,
            "style": cell.style,
        }
        rows.append(
            {
                **common,
                "column": "before",
                "judged object": cell.before_verdict[0],
                "object confidence": round(cell.before_confidence[0], 4),
                "judged style": cell.before_verdict[1],
                "style confidence": round(cell.before_confidence[1], 4),
            }
        )
        for grid in grids:
            after = grid.cells[i]
            rows.append(
                {
                    **common,
                    "column": grid.method,
                    "judged object": after.after_verdict[0],
                    "object confidence": round(after.after_confidence[0], 4),
                    "judged style": after.after_verdict[1],
                    "style confidence": round(after.after_confidence[1], 4),
                }
            )
    return rows


def metric_rows(grids: list[UnlearnGrid]) -> list[dict]:
    """One row per (concept, metric, column): the rate, its Wilson 95% interval and its counts.

    The "before" column is measured once (the unedited images are shared by every method)."""
    rows = []
    first = grids[0]
    columns = [("before", first.counts_before, 0.0)] + [(g.method, g.counts_after, g.setup_seconds) for g in grids]
    for concept in first.concepts:
        for metric in METRIC_NAMES:
            for column, counts, setup in columns:
                k, n = counts[concept][metric]
                low, high = wilson(k, n)
                rows.append(
                    {
                        "concept": concept,
                        "metric": metric,
                        "column": column,
                        "successes": k,
                        "images": n,
                        "rate": k / n if n else None,
                        "low95": low,
                        "high95": high,
                        "setup_s": round(setup, 2),
                    }
                )
    return rows


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def grid_export(grids: list[UnlearnGrid]) -> dict:
    """Everything the Unlearn view shows, as plain data (images left out): for JSON export."""
    first = grids[0]
    return {
        "concepts": list(first.concepts),
        "seed": first.seed,
        "seeds": list(first.seeds),
        "methods": [g.method for g in grids],
        "variants": {g.method: g.variant for g in grids if g.variant is not None},
        "interventions": [intervention_to_dict(iv) for g in grids for iv in g.interventions],
        "verdicts": verdict_rows(grids),
        "metrics": metric_rows(grids),
    }


def metric_cell(k: int, n: int) -> str:
    """ "62.5% (5/8)\\n[30.6–86.3%]": a rate, its counts and its Wilson 95% interval."""
    if n == 0:
        return "n/a (no images)"
    low, high = wilson(k, n)
    return f"{percent(k / n)} ({k}/{n}) [{percent(low)}–{percent(high)}]"


# --------------------------------------------------------------------------- without a judge
def change_rows(grid: ChangeGrid) -> list[dict]:
    """One row per prompt and column (before, then each method): the measured change."""
    rows = []
    for i, cell in enumerate(grid.cells):
        rows.append(
            {
                "row": i,
                "role": cell.role,
                "prompt": cell.prompt,
                "column": "before",
                "pixel_change": 0.0,
                "feature_activation": cell.feature_before,
                "feature_drop": None,
            }
        )
        for m in grid.methods:
            rows.append(
                {
                    "row": i,
                    "role": cell.role,
                    "prompt": cell.prompt,
                    "column": m,
                    "pixel_change": cell.pixel_change(m),
                    "feature_activation": cell.feature_after[m],
                    "feature_drop": cell.feature_drop(m),
                }
            )
    return rows


def change_summary(grid: ChangeGrid) -> list[dict]:
    """Per method and row role: mean pixel change, mean feature activation before and after and
    the relative drop of those means (None when nothing fired before)."""
    out = []
    for m in grid.methods:
        for role in ("target", "retained"):
            cells = [c for c in grid.cells if c.role == role]
            if not cells:
                continue
            before = float(np.mean([c.feature_before for c in cells]))
            after = float(np.mean([c.feature_after[m] for c in cells]))
            out.append(
                {
                    "method": m,
                    "role": role,
                    "images": len(cells),
                    "pixel_change": float(np.mean([c.pixel_change(m) for c in cells])),
                    "feature_before": before,
                    "feature_after": after,
                    "feature_drop": (1 - after / before) if before > 0 else None,
                }
            )
    return out


def change_export(grid: ChangeGrid) -> dict:
    return {
        "concepts": list(grid.concepts),
        "seed": grid.seed,
        "methods": list(grid.methods),
        "judge": None,
        "measures": {
            "pixel_change": "mean |after - before| over pixels and channels, 0-255",
            "feature_activation": "summed activation of the removed concepts' selected features, "
            "mean over steps and patches, at " + ", ".join(grid.points),
        },
        "params": grid.params,
        "interventions": [intervention_to_dict(iv) for iv in grid.interventions],
        "selected_per_step": grid.selected,
        "rows": change_rows(grid),
        "summary": change_summary(grid),
    }
