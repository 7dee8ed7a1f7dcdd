import pytest
import torch

from saeuron_core.errors import SaeuronError
from saeuron_core.minicanvas.evaluation import JudgedImage, removal_metrics, removal_pairs
from saeuron_core.scoring import select
from saeuron_core.minicanvas.tuning import defaults_table, pick, tau_for_count


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
        assert [len(s) for s in select(scores, paper_tau)] == [len(s) for s in select(scores, tau_for_count(count, 20480))]


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


def test_defaults_table_picks_best_shared_style_setting_and_per_object():
    rows = [
        {"concept": "dots", "count": 1, "tau": 99.9, "gamma": -1.0, "score": 0.9},
        {"concept": "solid", "count": 1, "tau": 99.9, "gamma": -1.0, "score": 0.5},
        {"concept": "dots", "count": 2, "tau": 99.8, "gamma": -5.0, "score": 0.8},
        {"concept": "solid", "count": 2, "tau": 99.8, "gamma": -5.0, "score": 0.8},
    ]
    objects = [
        {"concept": "star", "count": 1, "tau": 99.9, "gamma": -5.0, "score": 0.7},
        {"concept": "star", "count": 3, "tau": 99.7, "gamma": -20.0, "score": 0.7},
        {"concept": "star", "count": 2, "tau": 99.8, "gamma": -10.0, "score": 0.6},
    ]
    table = defaults_table(rows, objects)
    assert table["kinds"]["style"]["gamma"] == -5.0 and table["kinds"]["style"]["latents_per_step"] == 2
    assert table["concepts"]["star"]["latents_per_step"] == 1  # tie: the smaller edit
    assert pick(objects)["gamma"] == -5.0
    assert "dots" not in table["concepts"]
    own = defaults_table(rows, objects, "per-concept")
    assert own["concepts"]["dots"]["gamma"] == -1.0 and own["concepts"]["solid"]["gamma"] == -5.0  # each style its best
    assert own["kinds"]["style"] == table["kinds"]["style"]  # the shared setting stays as the fallback
    with pytest.raises(SaeuronError, match="style settings must be one of"):
        defaults_table(rows, objects, "per-style")


def test_tune_refuses_evaluation_seeds(tiny_bundle):
    from saeuron_core.minicanvas.judge import Judge
    from saeuron_core.pipeline import load_pipeline, model_info
    from saeuron_core.minicanvas.tuning import sweep_concept
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
    cmd = [sys.executable, "-m", "saeuron_core.cli", "--threads", "1", "tune", "--model", str(tiny_bundle / "model"), "--sae", str(tiny_bundle / "sae"), "--stats", str(tiny_bundle / "stats"), "--judge", str(tiny_bundle / "judge"), "--concept", "dots", "--concept", "star", "--count", "1", "--gamma", "-1", "--gamma", "-5", "--steps", "2", "--out", str(out), "--report", str(tmp_path / "rows.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    table = json.loads(out.read_text())
    assert table["kinds"]["style"]["gamma"] in (-1.0, -5.0) and "star" in table["concepts"]
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert len(rows) == 4 and all(0 <= r["UA"] <= 1 and 0 <= r["IRA"] <= 1 for r in rows)
    assert table["seeds"] == [2_000_000]


@pytest.mark.slow
def test_table_from_saved_reports(tmp_path):
    import json
    import subprocess
    import sys

    rows = [
        {"concept": "dots", "kind": "style", "count": 1, "tau": 99.9, "gamma": -1.0, "score": 0.9},
        {"concept": "star", "kind": "object", "count": 2, "tau": 99.8, "gamma": -10.0, "score": 0.7},
    ]
    (tmp_path / "a.json").write_text(json.dumps({"rows": rows[:1]}))
    (tmp_path / "b.json").write_text(json.dumps({"rows": rows[1:]}))
    out = tmp_path / "table.json"
    cmd = [sys.executable, "-m", "saeuron_core.cli", "tune", "--from-report", str(tmp_path / "a.json"), "--from-report", str(tmp_path / "b.json"), "--out", str(out)]
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    table = json.loads(out.read_text())
    assert table["kinds"]["style"]["gamma"] == -1.0 and table["concepts"]["star"]["gamma"] == -10.0
    (tmp_path / "bad.json").write_text("{}")
    bad = subprocess.run(cmd[:5] + [str(tmp_path / "bad.json"), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a sweep report" in bad.stderr


def test_sweep_pairs_get_their_own_seeds_inside_the_sweep_split():
    from saeuron_core import minicanvas as mc
    from saeuron_core.minicanvas.tuning import pair_seeds

    rows = pair_seeds([2_000_000, 2_000_001], 20)
    flat = [s for row in rows for s in row]
    assert len(set(flat)) == len(flat) and all(mc.split_of(s) == "sweep" for s in flat)
    with pytest.raises(SaeuronError, match="left the sweep split"):
        pair_seeds([2_999_990], 3)
