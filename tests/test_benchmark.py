"""The evaluation benchmark: Frechet distance, plan validation, reports from a tiny run."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import needs_bundled

from saeuron_core import minicanvas as mc
from saeuron_core.errors import SaeuronError
from saeuron_core.minicanvas.benchmark import EvalPlan
from saeuron_core.minicanvas.benchmark_scores import frechet_distance


def test_frechet_distance_known_cases():
    torch.manual_seed(0)
    a = torch.randn(4000, 3)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + torch.tensor([2.0, 0.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(4.0, abs=1e-3)
    scaled = a * 2  # N(0, 4I) vs N(0, I): 3 * (1 + 4 - 2 * 2) = 3
    assert frechet_distance(a, scaled) == pytest.approx(3.0, rel=0.05)


def test_plan_validation():
    ok = dict(
        methods=("saeuron", "esd", "uce", "none"),
        domain="style",
        concepts=("dots",),
        seeds=(1_000_000,),
        steps=2,
        guidance=3.0,
    )
    EvalPlan(**ok)
    with pytest.raises(SaeuronError, match="unknown method 'esd2'"):
        EvalPlan(**{**ok, "methods": ("saeuron", "esd2")})
    with pytest.raises(SaeuronError, match="attack budget"):
        EvalPlan(**{**ok, "attack_prompts": 2, "attack_steps": 0})
    with pytest.raises(SaeuronError, match="attack_prompts must be an integer >= 0"):
        EvalPlan(**{**ok, "attack_prompts": -1})
    with pytest.raises(SaeuronError, match="unknown domain"):
        EvalPlan(**{**ok, "domain": "colour"})
    with pytest.raises(SaeuronError, match="unknown concept"):
        EvalPlan(**{**ok, "concepts": ("dog",)})
    with pytest.raises(SaeuronError, match="'sweep' split"):
        EvalPlan(**{**ok, "seeds": (2_000_001,)})


def evaluate(tiny_bundle, out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "saeuron_core.cli",
        "--threads",
        "1",
        "evaluate",
        "--model",
        str(tiny_bundle / "model"),
        "--sae",
        str(tiny_bundle / "sae"),
        "--stats",
        str(tiny_bundle / "stats"),
        "--defaults",
        str(tiny_bundle / "defaults.json"),
        "--judge",
        str(tiny_bundle / "judge"),
        "--steps",
        "2",
        "--cache",
        str(out.parent / "erasures"),
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_tiny_run_writes_every_report(tiny_bundle, tmp_path):
    out = tmp_path / "res"
    proc = evaluate(
        tiny_bundle,
        out,
        "--methods",
        "saeuron,esd,uce,none",
        "--concept",
        "dots",
        "--seeds",
        "1",
        "--esd-iterations",
        "3",
        "--attack-prompts",
        "2",
        "--attack-steps",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"saeuron", "esd", "uce", "none"} and metrics["plan"]["methods"] == [
        "saeuron",
        "esd",
        "uce",
        "none",
    ]
    for method, res in metrics["methods"].items():
        row = res["rows"][0]
        assert row["removed"] == ["dots"] and {
            "UA",
            "IRA",
            "CRA",
            "CRA_unstyled",
            "judge_fd_retained",
            "collateral_mae",
            "setup_seconds",
        } <= set(row)
        assert (
            res["summary"]["style"]["UA"] == row["UA"]
            and res["summary"]["style"]["kept_on_target"] == row["kept_on_target"]
        )
        if method == "none":
            assert "attack" not in row and res["cost"]["extra_storage_mb"] == 0
        else:
            attack = row["attack"]
            assert len(attack["prompts"]) == 2 and len(attack["shows_concept_after"]) == 2
            # the row's UA is what the per-prompt verdicts say, before and after
            assert attack["UA_before"] == pytest.approx(1 - sum(attack["shows_concept_before"]) / 2)
            assert attack["UA_after"] == pytest.approx(1 - sum(attack["shows_concept_after"]) / 2)
            assert res["summary"]["style"]["UA_attack_after"] == row["attack"]["UA_after"]
            # whether the concept is back: the judge's probability and feature similarity, before and after
            assert (
                0 <= attack["p_concept_before"] <= 1
                and 0 <= attack["p_concept_after"] <= 1
                and -1 <= attack["similarity_after"] <= 1
            )
            assert res["summary"]["style"]["attack_p_concept_after"] == pytest.approx(attack["p_concept_after"])
            assert sum(res["summary"]["style"]["attack_readings"].values()) == 1
            assert res["cost"]["extra_storage_mb"] > 0
    assert metrics["methods"]["esd"]["rows"][0]["settings"]["iterations"] == 3
    row = metrics["methods"]["saeuron"]["rows"][0]
    for name in ("UA", "IRA", "CRA", "unrecognisable", "kept_on_target"):
        iv = row["intervals"][name]
        assert iv["lo"] <= row[name] <= iv["hi"] and iv["value"] == pytest.approx(row[name]) and iv["n"] > 0
    assert row["intervals"]["UA"]["n"] == len(mc.OBJECTS)  # dots with every MiniCanvas object, 1 seed each
    summary = metrics["methods"]["saeuron"]["summary"]["style"]
    assert summary["intervals"]["average"]["lo"] <= summary["average"] <= summary["intervals"]["average"]["hi"]
    assert set(metrics["comparisons"]) == {"saeuron - esd", "saeuron - uce", "saeuron - none"}
    diff = metrics["comparisons"]["saeuron - none"]["style"]["average"]
    assert diff["units"] == 1 and diff["mean"] == pytest.approx(
        summary["average"] - metrics["methods"]["none"]["summary"]["style"]["average"]
    )
    assert row["attack"]["seeds"][0] != row["attack"]["seeds"][1]  # each attacked prompt its own seed
    assert metrics["peak_rss_mb"] > 0
    table = (out / "table.md").read_text()
    assert "| esd | style |" in table and "| uce | style |" in table and "Published: SD v1.5 on UnlearnCanvas" in table
    assert metrics["methods"]["saeuron"]["variant"] == "paper" and metrics["methods"]["esd"]["variant"] is None
    assert "SAE removal variants: `saeuron` = paper (the paper's method" in table
    assert "Paired differences" in table and "| saeuron - esd | style |" in table and "Wilson" in table
    assert (
        "Attack: is the removed concept back" in table
        and "p(concept) before -&gt; after" in (out / "report.html").read_text()
    )
    assert "plotly" in (out / "report.html").read_text() or "install plotly" in (out / "report.html").read_text()
    assert (out / "metrics.csv").read_text().count("\n") == 5
    assert len(list((out.parent / "erasures" / "esd").glob("dots-*"))) == 1  # cached for the next run
    again = evaluate(tiny_bundle, out, "--concept", "dots", "--seeds", "1")
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.slow
def test_saeuron_paper_alone_runs_and_shares_the_default_images_when_the_default_is_the_papers(tiny_bundle, tmp_path):
    out, work = tmp_path / "paper", tmp_path / "work"
    proc = evaluate(
        tiny_bundle,
        out,
        "--methods",
        "saeuron-paper",
        "--concept",
        "dots",
        "--seeds",
        "1",
        "--attack-prompts",
        "0",
        "--work",
        str(work),
    )
    assert proc.returncode == 0, proc.stderr
    both = evaluate(
        tiny_bundle,
        tmp_path / "both",
        "--methods",
        "saeuron,saeuron-paper",
        "--concept",
        "dots",
        "--seeds",
        "1",
        "--attack-prompts",
        "0",
        "--work",
        str(work),
    )
    assert both.returncode == 0, both.stderr
    metrics = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert {m: r["variant"] for m, r in metrics["methods"].items()} == {"saeuron": "paper", "saeuron-paper": "paper"}
    assert metrics["methods"]["saeuron"]["rows"][0]["UA"] == metrics["methods"]["saeuron-paper"]["rows"][0]["UA"]
    sets_root = next(work.rglob("plain")).parent
    sets = [d.name for d in sets_root.iterdir() if d.name != "plain"]
    assert len(sets) == 1 and sets[0].startswith("saeuron-dots-"), sets  # one image set serves both names
    assert "`saeuron-paper` = paper" in (tmp_path / "both" / "table.md").read_text()


@pytest.mark.slow
def test_reference_row_only(tiny_bundle, tmp_path):
    proc = evaluate(tiny_bundle, tmp_path / "none", "--method", "none", "--seeds", "1", "--concept", "star")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "none" / "metrics.json").read_text())
    row = metrics["methods"]["none"]["rows"][0]
    # the un-edited model changes nothing and is not attacked
    assert row["collateral_mae"] == 0 and "attack" not in row and metrics["reference"]["seconds_per_image"] > 0


@pytest.mark.slow
def test_bad_method_and_budget_are_clear_errors(tiny_bundle, tmp_path):
    proc = evaluate(tiny_bundle, tmp_path / "x", "--methods", "saeuron,salun")
    assert proc.returncode == 2 and "unknown method 'salun'" in proc.stderr
    proc = evaluate(tiny_bundle, tmp_path / "y", "--attack-steps", "0", "--concept", "dots")
    assert proc.returncode == 2 and "attack budget" in proc.stderr
    proc = evaluate(tiny_bundle, tmp_path / "z", "--seeds", "0", "--concept", "dots")
    assert proc.returncode == 2 and "--seeds must be >= 1" in proc.stderr
    proc = evaluate(tiny_bundle, tmp_path / "w", "--seed", "2000001", "--concept", "dots")
    assert proc.returncode == 2 and "'sweep' split" in proc.stderr


@needs_bundled
@pytest.mark.slow
def test_quick_style_benchmark_on_the_bundled_model(tmp_path):
    """Unlearning a style drives its accuracy far below the reference; another style stays close."""
    cmd = [
        sys.executable,
        "-m",
        "saeuron_core.cli",
        "--threads",
        "1",
        "evaluate",
        "--method",
        "saeuron",
        "--domain",
        "style",
        "--concept",
        "stripes",
        "--quick",
        "--out",
        str(tmp_path / "q"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "q" / "metrics.json").read_text())
    row, ref = m["methods"]["saeuron"]["rows"][0], m["reference"]
    assert row["UA"] >= 0.5 and 1 - row["UA"] < ref["style_accuracy"] - 0.4
    assert row["IRA"] >= ref["style_accuracy"] - 0.15


@needs_bundled
@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_quick_comparison_of_every_method_on_the_bundled_model(tmp_path):
    """The issue's one command: every method on every style, on the same seeds, each removal
    attacked. Each method removes far more than the un-edited model "removes", keeps the other
    styles, and keeps most objects (SAeUron's per-style settings cost objects: CRA ~0.66)."""
    cmd = [
        sys.executable,
        "-m",
        "saeuron_core.cli",
        "--threads",
        "1",
        "evaluate",
        "--methods",
        "saeuron,esd,uce,none",
        "--domain",
        "style",
        "--quick",
        "--cache",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "cmp"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    summary = {method: res["summary"]["style"] for method, res in m["methods"].items()}
    for method in ("saeuron", "esd", "uce"):
        s = summary[method]
        assert s["UA"] > summary["none"]["UA"] + 0.25, (method, s)
        assert s["IRA"] >= 0.85 and s["CRA"] >= 0.5, (method, s)
        assert all(len(r["attack"]["prompts"]) == 2 for r in m["methods"][method]["rows"])
    assert m["methods"]["esd"]["cost"]["setup_seconds"] > m["methods"]["uce"]["cost"]["setup_seconds"]
    assert "| uce | style |" in (tmp_path / "cmp" / "table.md").read_text()


def test_attack_reading_rule_on_hand_cases():
    from saeuron_core.minicanvas.benchmark_attack import attack_reading, similarity_recovered

    assert similarity_recovered(0.6, 0.8) == pytest.approx(0.5) and similarity_recovered(0.6, 0.5) == pytest.approx(
        -0.25
    )
    assert similarity_recovered(1.0, 1.0) != similarity_recovered(1.0, 1.0)  # nothing removed: nan
    base = {
        "UA_before": 1.0,
        "UA_after": 0.0,
        "p_concept_before": 0.1,
        "p_concept_after": 0.9,
        "similarity_recovered": 0.7,
    }
    assert attack_reading(base) == "restored" and attack_reading({**base, "UA_after": 1.0}) == "restored"
    assert attack_reading({**base, "p_concept_after": 0.3}) == "judge confused, concept not restored"
    assert attack_reading({**base, "similarity_recovered": 0.1}) == "judge confused, concept not restored"
    assert attack_reading({**base, "UA_after": 1.0, "p_concept_after": 0.3}) == "moved towards the concept"
    assert (
        attack_reading({**base, "UA_after": 1.0, "p_concept_after": 0.15, "similarity_recovered": 0.3})
        == "moved towards the concept"
    )
    assert (
        attack_reading({**base, "UA_after": 1.0, "p_concept_after": 0.15, "similarity_recovered": 0.1}) == "no effect"
    )


def test_attack_row_reports_probability_and_feature_similarity(tiny_bundle):
    """The attack row's p(concept) and similarity are the judge's own numbers on the strip's images."""
    from saeuron_core.baselines.attack import AttackConfig
    from saeuron_core.baselines.methods import prepare_removal
    from saeuron_core.minicanvas.benchmark_attack import attack_reading, attack_row
    from saeuron_core.minicanvas.judge import Judge
    from saeuron_core.pipeline import load_pipeline, model_info
    from saeuron_core.unlearning import SaeBundle

    pipe = load_pipeline(str(tiny_bundle / "model"))
    info = model_info(pipe, str(tiny_bundle / "model"))
    bundle = SaeBundle.load(info, tiny_bundle / "sae", tiny_bundle / "stats", tiny_bundle / "defaults.json")
    judge = Judge.load(tiny_bundle / "judge")
    removal = prepare_removal(pipe, info, "saeuron", ["dots"], bundle=bundle)
    row, strip = attack_row(pipe, judge, removal, "dots", 2, (1_000_000,), 2, 4.0, AttackConfig(steps=2))
    h, w = strip.shape[0] // 3, strip.shape[1] // 2
    images = {
        name: np.stack([strip[i * h : (i + 1) * h, j * w : (j + 1) * w] for j in range(2)])
        for i, name in enumerate(("target", "before", "after"))
    }
    verdicts = {name: judge.classify(x) for name, x in images.items()}
    for name in ("target", "before", "after"):
        p = judge.probability(verdicts[name], "dots")
        assert (
            row[f"p_concept_{name}"] == pytest.approx(float(p.mean()), abs=1e-5) and 0 <= row[f"p_concept_{name}"] <= 1
        )
    assert row["p_concept_after_each"] == pytest.approx(judge.probability(verdicts["after"], "dots").tolist(), abs=1e-5)
    for name in ("before", "after"):
        cos = torch.nn.functional.cosine_similarity(verdicts[name]["features"], verdicts["target"]["features"], dim=-1)
        assert row[f"similarity_{name}"] == pytest.approx(float(cos.mean()), abs=1e-5)
    assert row["reading"] == attack_reading(row)
    # the verdicts behind UA agree with the probabilities' argmax
    assert row["shows_concept_after"] == [v == "dots" for v in verdicts["after"]["style"]]


def test_control_plumbing_on_the_tiny_bundle(tiny_bundle, tmp_path):
    out = tmp_path / "ctl"
    proc = evaluate(
        tiny_bundle,
        out,
        "--control",
        "--concept",
        "dots",
        "--seeds",
        "1",
        "--control-top",
        "1",
        "--control-top",
        "2",
        "--control-strength",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "control.json").read_text())
    (row,) = result["rows"]
    assert row["concept"] == "dots" and len(row["features"]) == 2 and set(row["ablate"]) == {"none", "top1", "top2"}
    assert set(row["steer"]) == {"none", "top1@2", "top2@2"}
    for cell in row["ablate"].values():
        assert (
            cell["UA"]["n"] == len(mc.OBJECTS) and 0 <= cell["UA"]["lo"] <= cell["UA"]["value"] <= cell["UA"]["hi"] <= 1
        )
    assert all(v > 0 for v in row["typical_top_activation"].values())
    assert "| dots |" in (out / "control.md").read_text() and result["summary"]["style"]["concepts"] == 1
    # the concept handles beside the top-n rows: pooled rates with Wilson intervals
    summary = result["summary"]["style"]
    for key in ("concept_removes", "concept_removes_kept", "concept_adds"):
        rate = summary[key]
        assert rate["n"] > 0 and 0 <= rate["lo"] <= rate["value"] <= rate["hi"] <= 1
    assert summary["concept_removes"]["n"] == len(mc.OBJECTS) and summary["concept_adds"]["n"] == len(mc.OBJECTS)
    handles = row["handles"]
    assert (
        handles["remove"]["interventions"][0]["type"] == "Unlearn"
        and handles["add"]["interventions"][0]["type"] == "PromptAdd"
    )
    assert "Concept handles" in (out / "control.md").read_text()
    bad = evaluate(tiny_bundle, tmp_path / "bad", "--control", "--concept", "dots", "--control-strength", "0")
    assert bad.returncode == 2 and "strengths must be > 0" in bad.stderr
    bad = evaluate(tiny_bundle, tmp_path / "bad2", "--control", "--concept", "dots", "--control-add-strength", "-1")
    assert bad.returncode == 2 and "--control-add-strength must be > 0 and <= 3" in bad.stderr


def test_handle_summary_pools_the_kinds_concepts_with_wilson_intervals():
    from saeuron_core.intervals import Rate
    from saeuron_core.minicanvas.control import markdown, summary

    def handles(removes, kept, adds, add_kept):
        return {
            "remove": {"removes": Rate(*removes).as_dict(), "kept": Rate(*kept).as_dict()},
            "add": {"adds": Rate(*adds).as_dict(), "kept": Rate(*add_kept).as_dict(), "strength": 2.0},
        }

    rows = [
        {"concept": "dots", "kind": "style", "handles": handles((5, 6), (4, 6), (3, 6), (6, 6))},
        {"concept": "solid", "kind": "style", "handles": handles((6, 6), (6, 6), (0, 6), (5, 6))},
        {"concept": "star", "kind": "object", "handles": handles((8, 8), (7, 8), (1, 5), (5, 5))},
    ]
    out = summary(rows)
    assert (
        out["style"]["concept_removes"] == Rate(11, 12).as_dict()
        and out["style"]["concept_removes_kept"] == Rate(10, 12).as_dict()
    )
    assert (
        out["style"]["concept_adds"] == Rate(3, 12).as_dict() and out["object"]["concept_adds"] == Rate(1, 5).as_dict()
    )
    assert "ablation_removes" not in out["style"]  # no top-n rows were measured
    text = markdown(rows)
    assert "| **all styles** | 92% [65, 99] |" in text and "| star | 100% [68, 100] |" in text


@pytest.mark.slow
def test_work_folder_resumes_without_generating_and_fewer_seeds_reuse_it(tiny_bundle, tmp_path, monkeypatch):
    """A rerun with the same work folder generates nothing and reports the same numbers; a run with
    the first of those seeds reuses their sets; a changed removal setting is not reused."""
    from saeuron_core.minicanvas import benchmark, image_sets
    from saeuron_core.minicanvas.judge import Judge
    from saeuron_core.pipeline import load_pipeline, model_info
    from saeuron_core.unlearning import SaeBundle

    pipe = load_pipeline(str(tiny_bundle / "model"))
    info = model_info(pipe, str(tiny_bundle / "model"))
    bundle = SaeBundle.load(info, tiny_bundle / "sae", tiny_bundle / "stats", tiny_bundle / "defaults.json")
    judge = Judge.load(tiny_bundle / "judge")
    work = tmp_path / "work"
    plan = EvalPlan(
        ("saeuron", "none"), "style", ("dots",), (1_000_000, 1_000_001), 2, 4.0, attack_prompts=1, attack_steps=1
    )
    first = benchmark.run(pipe, info, bundle, judge, plan, tmp_path / "a", work=work, log=lambda m: None)
    sets = sorted(p.relative_to(work) for p in work.rglob("*.npz"))
    assert len([p for p in sets if "attacks-" in str(p)]) == 1 and len(sets) == 5  # plain + dots at 2 seeds, 1 attack
    assert not list(work.rglob("*.claim"))  # claims released

    def no_generation(*args, **kwargs):
        raise AssertionError("a finished set was generated again")

    monkeypatch.setattr(image_sets, "generate_protocol", no_generation)
    monkeypatch.setattr(benchmark, "attack_row", no_generation)
    again = benchmark.run(pipe, info, bundle, judge, plan, tmp_path / "b", work=work, log=lambda m: None)
    for method in ("saeuron", "none"):
        assert again["methods"][method]["rows"][0]["UA"] == first["methods"][method]["rows"][0]["UA"]
        assert again["methods"][method]["rows"][0]["CRA"] == first["methods"][method]["rows"][0]["CRA"]
    assert (
        again["methods"]["saeuron"]["rows"][0]["attack"]["UA_after"]
        == first["methods"]["saeuron"]["rows"][0]["attack"]["UA_after"]
    )
    one = benchmark.run(
        pipe,
        info,
        bundle,
        judge,
        EvalPlan(("saeuron",), "style", ("dots",), (1_000_000,), 2, 4.0),
        tmp_path / "c",
        work=work,
        log=lambda m: None,
    )
    assert one["methods"]["saeuron"]["rows"][0]["intervals"]["UA"]["n"] == len(mc.OBJECTS)
    bundle.defaults["kinds"]["style"]["gamma"] = -7.0  # another setting: its images are made afresh
    with pytest.raises(AssertionError, match="generated again"):
        benchmark.run(
            pipe,
            info,
            bundle,
            judge,
            EvalPlan(("saeuron",), "style", ("dots",), (1_000_000,), 2, 4.0),
            tmp_path / "d",
            work=work,
            log=lambda m: None,
        )


def _row(concept_set, records):
    """A benchmark row as ``concept_row`` writes it, without images (no fidelity needed here)."""
    from saeuron_core.minicanvas.evaluation import removal_counts

    row = {
        "removed": list(concept_set),
        "retain_style": 1.0,
        "retain_object": 1.0,
        "CRA_unstyled": 1.0,
        "judge_fd_retained": 0.0,
        "collateral_mae": 0.0,
        "seconds_per_image": 0.1,
        "settings": {},
        "setup_seconds": 0.0,
    }
    for c in concept_set:
        counts = removal_counts(records, c)
        row.setdefault("per_concept", {})[c] = {
            **{k: r.value for k, r in counts.items()},
            "intervals": {k: r.as_dict() for k, r in counts.items()},
        }
    if len(concept_set) == 1:
        row.update(row["per_concept"][concept_set[0]])
    return row


def test_kept_on_target_reaches_summary_comparisons_and_every_report(tmp_path):
    from saeuron_core.minicanvas.benchmark_report import markdown_table, write_reports
    from saeuron_core.minicanvas.benchmark_scores import compare_methods, summarize
    from saeuron_core.minicanvas.evaluation import JudgedImage

    def records(wreck: bool):
        # every dots image loses its dots; ``wreck`` loses the object too
        return [
            JudgedImage(
                o,
                s,
                0,
                ("cross" if o != "cross" else "star") if wreck and s == "dots" else o,
                "solid" if s == "dots" else s,
            )
            for o in mc.OBJECTS
            for s in (*mc.STYLES, None)
        ]

    by_method = {}
    for method, wreck in (("saeuron", True), ("uce", False)):
        rows = [_row(("dots",), records(wreck)), _row(("dots", "rings"), records(wreck))]
        by_method[method] = {"rows": rows, "summary": summarize(rows), "cost": {}}
    wrecked, kept = by_method["saeuron"]["summary"]["style"], by_method["uce"]["summary"]["style"]
    assert wrecked["UA"] == kept["UA"] == 1.0  # UA cannot tell them apart ...
    assert wrecked["kept_on_target"] == 0.0 and kept["kept_on_target"] == 1.0  # ... kept_on_target can
    assert (
        wrecked["intervals"]["kept_on_target"]["n"] == len(mc.OBJECTS)
        and wrecked["intervals"]["kept_on_target"]["hi"] < 0.5
    )
    comparisons = compare_methods(by_method)
    assert comparisons["saeuron - uce"]["style"]["kept_on_target"]["mean"] == pytest.approx(-1.0)
    result = {
        "methods": by_method,
        "comparisons": comparisons,
        "reference": {
            "style_accuracy": 1.0,
            "object_accuracy": 1.0,
            "object_accuracy_unstyled": 1.0,
            "judge_fd": 0.0,
            "seconds_per_image": 0.1,
        },
        "plan": {},
        "wall_seconds": 0,
        "peak_rss_mb": 0,
        "cost_definitions": {},
    }
    table = markdown_table(result)
    assert "| kept on target |" in table and "| saeuron | style |" in table
    summary_line = next(line for line in table.splitlines() if line.startswith("| saeuron | style |"))
    assert "| 0.00% [" in summary_line and "| 100.00% [" in next(
        line for line in table.splitlines() if line.startswith("| uce | style |")
    )
    multi_line = next(line for line in table.splitlines() if line.startswith("| dots+rings |"))
    assert "dots: 0.00%" in multi_line and "rings: " in multi_line  # per concept of a multi-concept row
    write_reports(result, {}, tmp_path)
    header, *lines = (tmp_path / "metrics.csv").read_text().splitlines()
    column = header.split(",").index("kept_on_target")
    assert {line.split(",")[2]: line.split(",")[column] for line in lines if line.startswith("uce,dots,")} == {
        "dots": "1.0"
    }
    assert "kept_on_target" in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "metrics.json").read_text())["methods"]["saeuron"]["rows"][0]["kept_on_target"] == 0.0
