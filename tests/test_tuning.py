import pytest
import torch

from saeuron_core.errors import SaeuronError
from saeuron_core.minicanvas.evaluation import JudgedImage, removal_metrics, removal_pairs
from saeuron_core.minicanvas.tuning import criterion_score, defaults_table, pick, tau_for_count
from saeuron_core.scoring import select


@pytest.mark.parametrize("n", [1024, 20480])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_tau_for_count_selects_that_many_latents(n, count):
    scores = torch.randn(5, n)
    assert all(len(s) == count for s in select(scores, tau_for_count(count, n)))
    with pytest.raises(SaeuronError):
        tau_for_count(0, n)


def test_paper_percentiles_and_ours_agree_at_paper_width():
    # the paper's 99.999 / 99.995 / 99.99 select 1 / 2 / 3 of 20480
    for count, paper_tau in ((1, 99.999), (2, 99.995), (3, 99.99)):
        scores = torch.randn(3, 20480)
        assert [len(s) for s in select(scores, paper_tau)] == [
            len(s) for s in select(scores, tau_for_count(count, 20480))
        ]


def test_removal_pairs():
    target, retain = removal_pairs("dots")
    assert len(target) == 6 and all(s == "dots" for _, s in target)
    assert len(retain) == 7 * 6 and all(s != "dots" for _, s in retain)
    _, few = removal_pairs("star", retain_per_concept=2)
    assert len(few) == 5 * 2 and all(o != "star" for o, _ in few)


def test_removal_metrics_by_hand():
    r = lambda o, s, po, ps: JudgedImage(o, s, 0, po, ps)  # noqa: E731
    records = [
        r("star", "dots", "star", "dots"),  # style not removed
        r("heart", "dots", "heart", "solid"),  # removed
        r("star", "solid", "heart", "solid"),  # retained style, wrong object
        r("star", "rings", "star", "dots"),  # collateral
    ]
    m = removal_metrics(records, "dots")
    assert m == {"UA": 0.5, "IRA": 0.5, "CRA": 0.75}
    m = removal_metrics(records, "star")
    assert m["UA"] == pytest.approx(1 - 2 / 3) and m["IRA"] == 1.0 and m["CRA"] == 0.5


def _row(concept, count, gamma, ua, ira, cra, tau=99.0):
    return {"concept": concept, "count": count, "tau": tau, "gamma": gamma, "UA": ua, "IRA": ira, "CRA": cra}


def test_defaults_table_picks_best_shared_style_setting_and_per_object():
    # paper score (UA+IRA)/2: dots@1 0.9, solid@1 0.5, dots@2 0.8, solid@2 0.8; CRA equal (1.0)
    rows = [
        _row("dots", 1, -1.0, 0.9, 0.9, 1.0),
        _row("solid", 1, -1.0, 0.5, 0.5, 1.0),
        _row("dots", 2, -5.0, 0.8, 0.8, 1.0),
        _row("solid", 2, -5.0, 0.8, 0.8, 1.0),
    ]
    objects = [
        _row("star", 1, -5.0, 0.7, 0.7, 1.0),
        _row("star", 3, -20.0, 0.7, 0.7, 1.0),
        _row("star", 2, -10.0, 0.6, 0.6, 1.0),
    ]
    for criterion in ("paper", "all"):
        table = defaults_table(rows, objects, criterion=criterion)
        assert table["kinds"]["style"]["gamma"] == -5.0 and table["kinds"]["style"]["latents_per_step"] == 2
        assert table["concepts"]["star"]["latents_per_step"] == 1  # tie: the smaller edit
        assert pick(objects, criterion)["gamma"] == -5.0
        assert "dots" not in table["concepts"] and table["criterion"] == criterion
    own = defaults_table(rows, objects, "per-concept")
    assert own["concepts"]["dots"]["gamma"] == -1.0 and own["concepts"]["solid"]["gamma"] == -5.0  # each style its best
    assert (
        own["kinds"]["style"] == defaults_table(rows, objects)["kinds"]["style"]
    )  # the shared setting stays as the fallback
    with pytest.raises(SaeuronError, match="style settings must be one of"):
        defaults_table(rows, objects, "per-style")


def test_the_criterion_decides_when_cra_is_at_stake():
    # strong edit: UA 1, IRA 0.9 but CRA 0.3; mild edit: UA 0.8, IRA 0.9, CRA 0.95
    rows = [_row("dots", 3, -20.0, 1.0, 0.9, 0.3), _row("dots", 1, -5.0, 0.8, 0.9, 0.95)]
    assert pick(rows, "paper")["gamma"] == -20.0  # (UA + IRA) / 2 never sees CRA
    assert pick(rows, "all")["gamma"] == -5.0
    assert criterion_score(rows[0], "all") == pytest.approx(2.2 / 3)
    with pytest.raises(SaeuronError, match="unknown criterion 'best'; criteria: all"):
        pick(rows, "best")


def test_tune_refuses_evaluation_seeds(tiny_bundle):
    from saeuron_core.minicanvas.judge import Judge
    from saeuron_core.minicanvas.tuning import sweep_concept
    from saeuron_core.pipeline import load_pipeline, model_info
    from saeuron_core.unlearning import SaeBundle

    pipe = load_pipeline(str(tiny_bundle / "model"))
    bundle = SaeBundle.load(model_info(pipe), tiny_bundle / "sae", tiny_bundle / "stats")
    judge = Judge.load(tiny_bundle / "judge")
    with pytest.raises(SaeuronError, match="not in the sweep split"):
        sweep_concept(pipe, bundle, judge, "dots", [1], [-1.0], [1_000_000], 2, 4.0)


@pytest.mark.slow
def test_tune_command_writes_a_defaults_table(tiny_bundle, tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "defaults.json"
    cmd = [
        sys.executable,
        "-m",
        "saeuron_core.cli",
        "--threads",
        "1",
        "tune",
        "--model",
        str(tiny_bundle / "model"),
        "--sae",
        str(tiny_bundle / "sae"),
        "--stats",
        str(tiny_bundle / "stats"),
        "--judge",
        str(tiny_bundle / "judge"),
        "--concept",
        "dots",
        "--concept",
        "star",
        "--count",
        "1",
        "--gamma",
        "-1",
        "--gamma",
        "-5",
        "--steps",
        "2",
        "--seeds",
        "1",
        "--criterion",
        "paper",
        "--out",
        str(out),
        "--report",
        str(tmp_path / "rows.json"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    table = json.loads(out.read_text())
    assert table["kinds"]["style"]["gamma"] in (-1.0, -5.0) and "star" in table["concepts"]
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert len(rows) == 4 and all(0 <= r["UA"] <= 1 and 0 <= r["IRA"] <= 1 for r in rows)
    assert table["seeds"] == [2_000_000] and table["criterion"] == "paper"
    assert all(
        r["score_paper"] == pytest.approx((r["UA"] + r["IRA"]) / 2)
        and r["score_all"] == pytest.approx((r["UA"] + r["IRA"] + r["CRA"]) / 3)
        for r in rows
    )
    bad = subprocess.run(
        cmd[: cmd.index("--criterion") + 1] + ["best", "--out", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown criterion 'best'" in bad.stderr


@pytest.mark.slow
def test_table_from_saved_reports(tmp_path):
    import json
    import subprocess
    import sys

    rows = [
        {"concept": "dots", "kind": "style", "count": 1, "tau": 99.9, "gamma": -1.0, "UA": 0.9, "IRA": 0.9, "CRA": 0.9},
        {
            "concept": "star",
            "kind": "object",
            "count": 2,
            "tau": 99.8,
            "gamma": -10.0,
            "UA": 0.7,
            "IRA": 0.7,
            "CRA": 0.7,
        },
    ]
    (tmp_path / "a.json").write_text(json.dumps({"rows": rows[:1]}))
    (tmp_path / "b.json").write_text(json.dumps({"rows": rows[1:]}))
    out = tmp_path / "table.json"
    cmd = [
        sys.executable,
        "-m",
        "saeuron_core.cli",
        "tune",
        "--from-report",
        str(tmp_path / "a.json"),
        "--from-report",
        str(tmp_path / "b.json"),
        "--out",
        str(out),
    ]
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    table = json.loads(out.read_text())
    assert table["kinds"]["style"]["gamma"] == -1.0 and table["concepts"]["star"]["gamma"] == -10.0
    (tmp_path / "bad.json").write_text("{}")
    bad = subprocess.run(
        cmd[:5] + [str(tmp_path / "bad.json"), "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "not a sweep report" in bad.stderr


def test_sweep_pairs_get_their_own_seeds_inside_the_sweep_split():
    from saeuron_core import minicanvas as mc
    from saeuron_core.minicanvas.tuning import pair_seeds

    pairs = mc.all_pairs()[:20]
    rows = pair_seeds(mc.split_seeds("sweep", 4), pairs)
    flat = [s for row in rows for s in row]
    assert len(set(flat)) == len(flat) and all(mc.split_of(s) == "sweep" for s in flat)
    assert rows[3] == mc.prompt_seeds(mc.split_seeds("sweep", 4), mc.prompt(*pairs[3]))
    with pytest.raises(SaeuronError, match="not in the sweep split"):
        pair_seeds([1_000_000], pairs)


def test_a_table_records_its_score_and_the_bundle_selects_with_it(tiny_bundle, tmp_path):
    """Rows swept with the specific score make a table that says so; SaeBundle.unlearn then
    selects with it (and the removal's settings name it); mixed scores are refused."""
    import json

    from saeuron_core.baselines.methods import prepare_removal
    from saeuron_core.pipeline import load_pipeline, model_info
    from saeuron_core.unlearning import SaeBundle

    rows = [{**_row("dots", 1, -5.0, 0.9, 0.9, 1.0), "score": "specific"}]
    table = defaults_table(rows, [])
    assert table["score"] == "specific"
    assert "score" not in defaults_table([_row("dots", 1, -5.0, 0.9, 0.9, 1.0)], [])  # the paper's stays implicit
    with pytest.raises(SaeuronError, match="different scores"):
        defaults_table(rows + [{**_row("solid", 1, -5.0, 0.9, 0.9, 1.0), "score": "paper"}], [])
    (tmp_path / "t.json").write_text(json.dumps(table))
    pipe = load_pipeline(str(tiny_bundle / "model"))
    info = model_info(pipe, str(tiny_bundle / "model"))
    bundle = SaeBundle.load(info, tiny_bundle / "sae", tiny_bundle / "stats", tmp_path / "t.json")
    assert all(iv.score == "specific" for iv in bundle.unlearn(["dots"]))
    assert all(iv.score == "paper" for iv in bundle.unlearn(["dots"], score="paper"))
    assert prepare_removal(pipe, info, "saeuron", ("dots",), bundle=bundle).settings["score"] == "specific"
    with pytest.raises(SaeuronError, match="unknown score"):
        bundle.unlearn(["dots"], score="ratio")
