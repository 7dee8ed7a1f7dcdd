"""The benchmark's reports: metrics.json, metrics.csv, table.md (ours beside the published
numbers) and report.html (charts and before / after image strips)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..io import atomic_path, write_json
from .image_sets import ImageSet

PAPER = {  # SD v1.5 on UnlearnCanvas (METHOD section 6), for side-by-side context only
    "style": {"UA": 0.9676, "IRA": 0.9870, "CRA": 0.9810},
    "object": {"UA": 0.8423, "IRA": 0.9005, "CRA": 0.7678},
    "memory_gb": 2.8,
    "storage_gb": 0.2,
}
# Published baselines on UnlearnCanvas (SD v1.5), as tabulated by UnlearnCanvas (Zhang et al. 2024)
# and quoted in the SAeUron paper. The averages are the ones METHOD.md states (ESD styles 91.17,
# UCE objects 56.11, SalUn 90.57 / 94.28); SalUn's per-metric numbers are not given there.
PAPER_BASELINES = {
    "esd": {
        "style": {"UA": 0.9858, "IRA": 0.8097, "CRA": 0.9396},
        "object": {"UA": 0.9215, "IRA": 0.5578, "CRA": 0.4423},
        "memory_gb": 17.8,
        "storage_gb": 4.3,
    },
    "uce": {
        "style": {"UA": 0.9840, "IRA": 0.6022, "CRA": 0.4771},
        "object": {"UA": 0.9431, "IRA": 0.3935, "CRA": 0.3467},
        "memory_gb": 5.1,
        "storage_gb": 1.7,
    },
    "salun": {"style": {"average": 0.9057}, "object": {"average": 0.9428}},
}


def _example_strip(concept_set, plain: ImageSet, edited: ImageSet, n: int = 6) -> np.ndarray:
    """Before (top) / after (bottom) for up to n images showing the removed concepts."""
    idx = [i for i, r in enumerate(plain.records) if r.style in concept_set or r.object_name in concept_set][
        :: max(1, len(plain.records) // 200)
    ][:n]
    return np.concatenate([np.concatenate(list(plain.images[idx]), 1), np.concatenate(list(edited.images[idx]), 1)], 0)


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.2f}%"


def _with_interval(value, interval: dict | None) -> str:
    """'95.00% [91.2, 97.4]': a rate and its 95% interval in percentage points; "-" (no data)
    for a rate of no trials, whose interval is all of [0, 1] (results written before the
    intervals agreed stored nan there)."""
    if interval is None or interval.get("n") == 0 or interval.get("lo") != interval.get("lo"):
        return _pct(value)
    return f"{_pct(value)} [{100 * interval['lo']:.1f}, {100 * interval['hi']:.1f}]"


def _diff(entry: dict) -> str:
    return f"{100 * entry['mean']:+.1f} [{100 * entry['lo']:+.1f}, {100 * entry['hi']:+.1f}]"


def difference_lines(comparisons: dict, intro: str, first: str, name=lambda key: key) -> list[str]:
    """Markdown rows of paired differences (bootstrap intervals), one per (comparison, kind)."""
    lines = [
        "",
        intro,
        "",
        f"| {first} | kind | avg | UA | IRA | CRA | kept on target |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, kinds in comparisons.items():
        for kind, e in kinds.items():
            kept = _diff(e["kept_on_target"]) if "kept_on_target" in e else "-"
            lines.append(
                f"| {name(key)} | {kind} | {_diff(e['average'])} | {_diff(e['UA'])} | {_diff(e['IRA'])} | "
                f"{_diff(e['CRA'])} | {kept} |"
            )
    return lines


def markdown_table(result: dict) -> str:
    """The comparison in the paper's format: ours (MiniCanvas), then the published numbers."""
    lines = [
        "### Ours: tiny SD-architecture model on MiniCanvas (this run)",
        "",
        "UA / IRA / CRA with Wilson 95% intervals over the images pooled across concepts; avg = (UA + IRA + CRA) / 3 "
        "(the paper's) with a bootstrap 95% interval over concepts; kept on target: share of the removed concept's "
        "own images on which the judge still sees the prompt's other concept (Wilson 95%); unrecognisable: share of "
        "the removed concept's images the judge places in neither head (top probability < 0.5 on both).",
        "",
        "| Method | Domain | UA | IRA | CRA | avg | kept on target | unrecognisable | UA attacked: before -> after | "
        "judge-FD (retained) | extra memory | extra storage | set-up s / removal | s / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, res in result["methods"].items():
        c = res["cost"]
        for kind, s in res["summary"].items():
            attacked = (
                f"{_pct(s['UA_attack_before'])} -> {_pct(s['UA_attack_after'])}" if "UA_attack_after" in s else "-"
            )
            mem = f"{c['extra_memory_mb']:.2f} MB" if c else "-"
            sto = f"{c['extra_storage_mb']:.2f} MB" if c else "-"
            setup = f"{c['setup_seconds']:.2f}" if c else "-"
            per_image = result["reference"]["seconds_per_image"] + (c.get("extra_seconds_per_image", 0.0) if c else 0.0)
            iv = s.get("intervals", {})
            cells = " | ".join(_with_interval(s[k], iv.get(k)) for k in ("UA", "IRA", "CRA", "average"))
            kept = _with_interval(s.get("kept_on_target"), iv.get("kept_on_target"))
            lines.append(
                f"| {method} | {kind} | {cells} | {kept} | {_pct(s.get('unrecognisable'))} | {attacked} | "
                f"{s['judge_fd_retained']:.2f} | {mem} | {sto} | {setup} | {per_image:.3f} |"
            )
    attacked = [
        (m, k, s)
        for m, res in result["methods"].items()
        for k, s in res["summary"].items()
        if "attack_p_concept_after" in s
    ]
    if attacked:
        lines += [
            "",
            "Attack: is the removed concept back, or is the judge only confused? p(concept): the judge's mean "
            "probability of the removed concept (un-edited images of the same prompts: the target value). "
            "Similarity: cosine of the judge's penultimate features to the un-edited image of the same prompt and "
            "seed; recovered: share of the way back to it. Reading per attacked prompt set: restored when p(concept) "
            "after >= 0.5 and at least half the similarity recovered; judge confused when UA fell without that; "
            "moved towards the concept when p(concept) rose by >= 0.1 or a quarter of the similarity was recovered; "
            "else no effect.",
            "",
            "| Method | Domain | UA before -> after | p(concept) before -> after (un-edited) | similarity before -> "
            "after | recovered | readings |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, kind, s in attacked:
            readings = ", ".join(f"{r}: {n}" for r, n in s["attack_readings"].items())
            lines.append(
                f"| {method} | {kind} | {_pct(s['UA_attack_before'])} -> {_pct(s['UA_attack_after'])} | "
                f"{s['attack_p_concept_before']:.3f} -> {s['attack_p_concept_after']:.3f} "
                f"({s['attack_p_concept_target']:.3f}) | {s['attack_similarity_before']:.3f} -> "
                f"{s['attack_similarity_after']:.3f} | {_pct(s['attack_similarity_recovered'])} | {readings} |"
            )
    if result.get("comparisons"):
        lines += difference_lines(
            result["comparisons"],
            "Paired differences (bootstrap 95% interval over concepts, percentage points; methods share every "
            "prompt's seeds):",
            "Difference",
        )
    variants = {m: res["variant"] for m, res in result["methods"].items() if res.get("variant")}
    if variants:
        lines += [
            "",
            "SAE removal variants: "
            + "; ".join(
                f"`{m}` = {v}"
                + (" (the paper's method: the default is the paper's)" if v == "paper" and m == "saeuron" else "")
                for m, v in variants.items()
            )
            + ".",
        ]
    ref = result["reference"]
    lines += [
        "",
        f"Un-edited reference: style accuracy {_pct(ref['style_accuracy'])}, object accuracy "
        f"{_pct(ref['object_accuracy'])} (unstyled prompts: {_pct(ref['object_accuracy_unstyled'])}), judge-FD "
        f"{ref['judge_fd']:.2f}. Method `none` is that model judged as if it had removed each concept (its UA is the "
        "judge's error).",
    ]
    lines += [
        "",
        "### Published: SD v1.5 on UnlearnCanvas (a different model and dataset; context only)",
        "",
        "| Method | Style UA | IRA | CRA | avg | Object UA | IRA | CRA | avg | memory | storage |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    published = {"saeuron": {**PAPER}, **PAPER_BASELINES}
    for method, p in published.items():
        cells = []
        for kind in ("style", "object"):
            k = p[kind]
            avg = k.get("average", sum(k.get(m, 0) for m in ("UA", "IRA", "CRA")) / 3)
            cells += [_pct(k.get("UA")), _pct(k.get("IRA")), _pct(k.get("CRA")), _pct(avg)]
        mem = f"{p['memory_gb']} GB" if "memory_gb" in p else "-"
        sto = f"{p['storage_gb']} GB" if "storage_gb" in p else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mem} | {sto} |")
    for method, res in result["methods"].items():
        if not res["rows"]:
            continue
        lines += [
            "",
            f"#### {method}: per removal (Wilson 95% intervals)",
            "",
            "| Removed | UA | IRA | CRA | kept on target | unrecognisable | retain style | retain object | "
            "collateral MAE | attacked UA before -> after | attack: p(concept) before -> after | attack: similarity "
            "before -> after | attack reading |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:

            def cell(name):
                labelled = name in ("UA", "kept_on_target") and len(r["per_concept"]) > 1
                return " / ".join(
                    (f"{c}: " if labelled else "") + _with_interval(m.get(name), m.get("intervals", {}).get(name))
                    for c, m in r["per_concept"].items()
                )

            a = r.get("attack", {})
            attacked = f"{_pct(a['UA_before'])} -> {_pct(a['UA_after'])}" if a else "-"
            p_concept = f"{a['p_concept_before']:.3f} -> {a['p_concept_after']:.3f}" if "p_concept_after" in a else "-"
            sim = f"{a['similarity_before']:.3f} -> {a['similarity_after']:.3f}" if "similarity_after" in a else "-"
            lines.append(
                f"| {'+'.join(r['removed'])} | {cell('UA')} | {cell('IRA')} | {cell('CRA')} | "
                f"{cell('kept_on_target')} | {cell('unrecognisable')} | {_pct(r['retain_style'])} | "
                f"{_pct(r['retain_object'])} | {r['collateral_mae']:.4f} | {attacked} | {p_concept} | {sim} | "
                f"{a.get('reading', '-')} |"
            )
    return "\n".join(lines) + "\n"


def write_reports(result: dict, examples: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result)
    with atomic_path(out / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "method",
                "removed",
                "concept",
                "UA",
                "IRA",
                "CRA",
                "kept_on_target",
                "CRA_unstyled",
                "retain_style",
                "retain_object",
                "judge_fd_retained",
                "collateral_mae",
                "seconds_per_image",
                "setup_seconds",
                "UA_attack_before",
                "UA_attack_after",
                "p_concept_attack_before",
                "p_concept_attack_after",
                "similarity_attack_before",
                "similarity_attack_after",
            ]
        )
        for method, res in result["methods"].items():
            for r in res["rows"]:
                a = r.get("attack", {})
                for c, m in r["per_concept"].items():
                    w.writerow(
                        [
                            method,
                            "+".join(r["removed"]),
                            c,
                            m["UA"],
                            m["IRA"],
                            m["CRA"],
                            m.get("kept_on_target", ""),
                            r.get("CRA_unstyled", ""),
                            r["retain_style"],
                            r["retain_object"],
                            r["judge_fd_retained"],
                            r["collateral_mae"],
                            r["seconds_per_image"],
                            r["setup_seconds"],
                            a.get("UA_before", ""),
                            a.get("UA_after", ""),
                            a.get("p_concept_before", ""),
                            a.get("p_concept_after", ""),
                            a.get("similarity_before", ""),
                            a.get("similarity_after", ""),
                        ]
                    )
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(markdown_table(result))
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(html_report(result, examples))


def html_report(result: dict, examples: dict) -> str:
    import base64
    import html
    import io

    from PIL import Image

    parts = [
        "<html><head><meta charset='utf-8'><title>MiniCanvas unlearning benchmark</title></head><body>",
        "<h1>Concept removal on MiniCanvas: " + ", ".join(result["methods"]) + "</h1>",
    ]
    try:
        import plotly.graph_objects as go

        for kind in ("style", "object"):
            summaries = {m: res["summary"][kind] for m, res in result["methods"].items() if kind in res["summary"]}
            if not summaries:
                continue
            fig = go.Figure()
            metrics = ["UA", "IRA", "CRA", "average", "kept_on_target"] + (
                ["UA_attack_after"] if any("UA_attack_after" in s for s in summaries.values()) else []
            )
            for method, s in summaries.items():
                iv = s.get("intervals", {})
                ys = [s.get(m) for m in metrics]
                plus = [(iv[m]["hi"] - y) if m in iv and y is not None else 0 for m, y in zip(metrics, ys)]
                minus = [(y - iv[m]["lo"]) if m in iv and y is not None else 0 for m, y in zip(metrics, ys)]
                fig.add_bar(
                    name=method,
                    x=metrics,
                    y=ys,
                    error_y=dict(type="data", symmetric=False, array=plus, arrayminus=minus),
                )
            fig.update_layout(
                barmode="group",
                title=f"{kind} removal: methods compared (mean over concepts; bars: 95% intervals)",
                yaxis_range=[0, 1],
            )
            parts.append(fig.to_html(full_html=False, include_plotlyjs="cdn"))
    except ImportError:
        parts.append("<p>(install plotly for charts)</p>")
    parts.append("<pre>" + html.escape(markdown_table(result)) + "</pre>")
    for name, strip in examples.items():
        buf = io.BytesIO()
        Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.NEAREST).save(buf, format="PNG")
        caption = (
            "attack targets (top) / removed, plain prompt (middle) / removed, attack prompt (bottom)"
            if "attacked" in name
            else "before (top) / after (bottom)"
        )
        parts.append(
            f"<h3>{html.escape(name)}: {caption}</h3><img "
            f"src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"
        )
    settings = {k: result[k] for k in ("plan", "wall_seconds", "peak_rss_mb", "cost_definitions")}
    settings["cost"] = {m: res["cost"] for m, res in result["methods"].items()}
    parts.append("<h2>Settings</h2><pre>" + html.escape(json.dumps(settings, indent=2)) + "</pre></body></html>")
    return "\n".join(parts)
