"""Summaries and reports of the generalisation experiment (``generalisation.run``): per group
(concepts in / outside the SAE's half) and kind, the half SAE against the full one, and
metrics.json / metrics.csv / table.md / report.html."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..intervals import Rate, paired_bootstrap
from ..io import atomic_path, write_json
from .benchmark_report import _pct, _with_interval, difference_lines
from .benchmark_scores import concept_average

KINDS = ("object", "style")
GROUPS = ("in", "out")
GROUP_NAMES = {"in": "in the SAE's half", "out": "outside the SAE's half"}

PAPER_TABLE3 = {  # SD v1.5 on UnlearnCanvas (METHOD section 8), context only
    "all data": {"UA": 0.7500, "IRA": 0.9018, "CRA": 0.8074, "average": 0.8197},
    "in": {"UA": 0.9976, "IRA": 0.9923, "CRA": 0.9848, "average": 0.9916},
    "out": {"UA": 0.5100, "IRA": 0.6738, "CRA": 0.9836, "average": 0.7225},
}


def _groups_of(rows: list[dict], group: str, kind: str) -> list[dict]:
    return [r for r in rows if r["group"] == group and (kind == "all" or r["kind"] == kind)]


def summarize_groups(rows: list[dict]) -> dict:
    """Per group (in / out) and kind (object, style, all): mean UA / IRA / CRA / kept_on_target over concepts, Wilson
    95% intervals over the pooled images, and a bootstrap interval over concepts of the average."""
    out: dict = {}
    for group in GROUPS:
        for kind in (*KINDS, "all"):
            chosen = _groups_of(rows, group, kind)
            if not chosen:
                continue
            present = [
                k for k in ("UA", "IRA", "CRA", "kept_on_target") if all(k in r for r in chosen)
            ]  # rows from before kept_on_target lack it
            s = {k: float(np.mean([r[k] for r in chosen])) for k in present}
            s["average"] = float(np.mean([concept_average(r) for r in chosen]))
            ivs = {}
            for name in (*present, "unrecognisable"):
                if kind == "all":
                    # objects and styles have different image counts per concept: the pooled rate
                    # is not the mean over concepts, so the interval is a bootstrap over concepts
                    values = [r[name] for r in chosen]
                    ivs[name] = paired_bootstrap(values, [0.0] * len(values))
                else:  # every concept of a kind has as many images: pooled rate = mean
                    parts = [r["intervals"][name] for r in chosen]
                    ivs[name] = Rate(sum(p["k"] for p in parts), sum(p["n"] for p in parts)).as_dict()
            averages = [concept_average(r) for r in chosen]
            ivs["average"] = paired_bootstrap(averages, [0.0] * len(averages))
            s.update(
                intervals=ivs,
                concepts=[r["removed"][0] for r in chosen],
                unrecognisable=float(np.mean([r["unrecognisable"] for r in chosen])),
            )
            out.setdefault(group, {})[kind] = s
    return out


def compare_groups(rows: dict[str, list[dict]]) -> dict:
    """Paired bootstrap over concepts: half SAE minus full SAE per group and kind (same concepts,
    same seeds), and within the half SAE the in-half minus out-of-half gap is reported beside it."""
    if "full" not in rows:
        return {}
    full = {r["removed"][0]: r for r in rows["full"]}
    out: dict = {}
    for group in GROUPS:
        for kind in (*KINDS, "all"):
            mine = [r for r in _groups_of(rows["half"], group, kind) if r["removed"][0] in full]
            if not mine:
                continue
            theirs = [full[r["removed"][0]] for r in mine]
            entry = {
                "average": paired_bootstrap([concept_average(r) for r in mine], [concept_average(r) for r in theirs])
            }
            for metric in ("UA", "IRA", "CRA", "kept_on_target"):
                if all(metric in r for r in mine + theirs):
                    entry[metric] = paired_bootstrap([r[metric] for r in mine], [r[metric] for r in theirs])
            out.setdefault(group, {})[kind] = entry
    return out


def markdown_table(result: dict) -> str:
    split = result["split"]
    how = f"drawn with integer seed {split['seed']}" if split["seed"] is not None else "chosen by name"
    lines = [
        "### Ours: tiny SD-architecture model on MiniCanvas (this run)",
        "",
        f"SAE trained on half of the concepts ({how}): "
        + "; ".join(f"{k}s {', '.join(v)}" for k, v in split["in_half"].items())
        + ". Never seen in training: "
        + "; ".join(f"{k}s {', '.join(v)}" for k, v in split["out_half"].items())
        + ".",
        f"Hook points: {result['config']['hook_points']}. SAE removal variant: "
        f"{result['config'].get('variant', 'paper')}. Held-out base seeds {result['config']['seeds']} (each prompt "
        f"its own seed per base), {result['config']['steps']} steps, guidance {result['config']['guidance']}.",
        "",
        "UA / IRA / CRA: mean over the group's concepts, Wilson 95% interval over the pooled images (kind 'all': "
        "bootstrap 95% interval over concepts, as objects and styles differ in images per concept); avg: "
        "(UA+IRA+CRA)/3 with a bootstrap 95% interval over concepts; kept on target: share of the removed concept's "
        "own images on which the judge still sees the prompt's other concept.",
        "",
        "| SAE trained on | concepts removed | kind | UA | IRA | CRA | avg | kept on target | unrecognisable | "
        "concepts |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    sae_names = {"half": "half of the concepts", "full": "every concept (reference)"}
    for name, summary in result["summary"].items():
        for group in GROUPS:
            for kind, s in summary.get(group, {}).items():
                iv = s["intervals"]
                cells = " | ".join(_with_interval(s[k], iv.get(k)) for k in ("UA", "IRA", "CRA", "average"))
                kept = _with_interval(s.get("kept_on_target"), iv.get("kept_on_target"))
                lines.append(
                    f"| {sae_names[name]} | {GROUP_NAMES[group]} | {kind} | {cells} | {kept} | "
                    f"{_pct(s['unrecognisable'])} | {', '.join(s['concepts'])} |"
                )
    if result.get("comparisons"):
        lines += difference_lines(
            result["comparisons"],
            "Half SAE minus full SAE on the same concepts and seeds (paired bootstrap 95% interval over concepts, "
            "percentage points):",
            "concepts removed",
            GROUP_NAMES.get,
        )
    ref = result["reference"]
    lines += [
        "",
        f"Un-edited reference: style accuracy {_pct(ref['style_accuracy'])}, object accuracy "
        f"{_pct(ref['object_accuracy'])}.",
    ]
    lines += ["", "Tau / gamma: " + result["settings_note"] + ".", "", "Statistics: " + result["statistics_note"] + "."]
    lines += [
        "",
        "### Published: SD v1.5 on UnlearnCanvas, Table 3 (a different model and data set; context only)",
        "",
        "| SAE / concepts | UA | IRA | CRA | avg |",
        "|---|---|---|---|---|",
    ]
    for label, key in (
        ("all data", "all data"),
        ("concepts in the SAE's training half", "in"),
        ("concepts outside it", "out"),
    ):
        p = result["paper"][key]
        lines.append(f"| {label} | {_pct(p['UA'])} | {_pct(p['IRA'])} | {_pct(p['CRA'])} | {_pct(p['average'])} |")
    lines += [
        "",
        "#### Per removal",
        "",
        "| SAE | removed | group | UA | IRA | CRA | kept on target | unrecognisable | settings |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in result["rows"].items():
        for r in rows:
            iv = r["intervals"]
            settings = "; ".join(
                f"{p}: " + ", ".join(f"tau {t:.3f} gamma {g:g}" for _, t, g in v) for p, v in r["settings"].items()
            )
            lines.append(
                f"| {name} | {r['removed'][0]} | {r['group']} | {_with_interval(r['UA'], iv['UA'])} | "
                f"{_with_interval(r['IRA'], iv['IRA'])} | {_with_interval(r['CRA'], iv['CRA'])} | "
                f"{_with_interval(r.get('kept_on_target'), iv.get('kept_on_target'))} | {_pct(r['unrecognisable'])} | "
                f"{settings} |"
            )
    return "\n".join(lines) + "\n"


def write_reports(result: dict, out: Path) -> None:
    import csv
    import html

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result)
    with atomic_path(out / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "sae",
                "removed",
                "kind",
                "group",
                "UA",
                "IRA",
                "CRA",
                "kept_on_target",
                "unrecognisable",
                "judge_fd_retained",
                "collateral_mae",
            ]
        )
        for name, rows in result["rows"].items():
            for r in rows:
                w.writerow(
                    [
                        name,
                        r["removed"][0],
                        r["kind"],
                        r["group"],
                        r["UA"],
                        r["IRA"],
                        r["CRA"],
                        r.get("kept_on_target", ""),
                        r["unrecognisable"],
                        r["judge_fd_retained"],
                        r["collateral_mae"],
                    ]
                )
    table = markdown_table(result)
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(table)
    parts = [
        "<html><head><meta charset='utf-8'><title>Generalisation to unseen concepts</title></head><body>",
        "<h1>Generalisation to concepts the SAE never saw (the paper's Table 3, on MiniCanvas)</h1>",
    ]
    try:
        import plotly.graph_objects as go

        fig = go.Figure()
        metrics = ["UA", "IRA", "CRA", "average", "kept_on_target"]
        for name, summary in result["summary"].items():
            for group in GROUPS:
                s = summary.get(group, {}).get("all")
                if s is None:
                    continue
                shown = [m for m in metrics if m in s]
                ys = [s[m] for m in shown]
                iv = s["intervals"]
                fig.add_bar(
                    name=f"{name} SAE, {GROUP_NAMES[group]}",
                    x=shown,
                    y=ys,
                    error_y=dict(
                        type="data",
                        symmetric=False,
                        array=[iv[m]["hi"] - y for m, y in zip(shown, ys)],
                        arrayminus=[y - iv[m]["lo"] for m, y in zip(shown, ys)],
                    ),
                )
        for key, label in (("in", "paper: in half"), ("out", "paper: outside")):  # the paper has no kept-on-target
            fig.add_scatter(
                name=label,
                x=metrics,
                y=[result["paper"][key].get(m) for m in metrics],
                mode="markers",
                marker_symbol="x",
                marker_size=12,
            )
        fig.update_layout(
            barmode="group",
            title="Every kind pooled: mean over concepts (bars: 95% intervals); crosses: published SD v1.5 numbers",
            yaxis_range=[0, 1.05],
        )
        parts.append(fig.to_html(full_html=False, include_plotlyjs="cdn"))
    except ImportError:
        parts.append("<p>(install plotly for charts)</p>")
    parts.append("<pre>" + html.escape(table) + "</pre>")
    parts.append(
        "<h2>Settings</h2><pre>"
        + html.escape(
            json.dumps(
                {k: result[k] for k in ("split", "config", "training_items", "build_seconds", "wall_seconds")}, indent=2
            )
        )
        + "</pre></body></html>"
    )
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text("\n".join(parts))
