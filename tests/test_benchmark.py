"""The evaluation benchmark: Frechet distance, plan validation, reports from a tiny run."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import needs_bundled
from saeuron_core.benchmark import EvalPlan, frechet_distance
from saeuron_core.errors import SaeuronError


def test_frechet_distance_known_cases():
    torch.manual_seed(0)
    a = torch.randn(4000, 3)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + torch.tensor([2.0, 0.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(4.0, abs=1e-3)
    scaled = a * 2  # N(0, 4I) vs N(0, I): 3 * (1 + 4 - 2 * 2) = 3
    assert frechet_distance(a, scaled) == pytest.approx(3.0, rel=0.05)


def test_plan_validation():
    ok = dict(method="saeuron", domain="style", concepts=("dots",), seeds=(1_000_000,), steps=2, guidance=3.0)
    EvalPlan(**ok)
    with pytest.raises(SaeuronError, match="unknown method 'esd2'"):
        EvalPlan(**{**ok, "method": "esd2"})
    with pytest.raises(SaeuronError, match="unknown domain"):
        EvalPlan(**{**ok, "domain": "colour"})
    with pytest.raises(SaeuronError, match="unknown concept"):
        EvalPlan(**{**ok, "concepts": ("dog",)})
    with pytest.raises(SaeuronError, match="'sweep' split"):
        EvalPlan(**{**ok, "seeds": (2_000_001,)})


def evaluate(tiny_bundle, out, *extra):
    cmd = [sys.executable, "-m", "saeuron_core.cli", "--threads", "1", "evaluate", "--model", str(tiny_bundle / "model"), "--sae", str(tiny_bundle / "sae"), "--stats", str(tiny_bundle / "stats"), "--defaults", str(tiny_bundle / "defaults.json"), "--judge", str(tiny_bundle / "judge"), "--steps", "2", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_tiny_run_writes_every_report(tiny_bundle, tmp_path):
    out = tmp_path / "res"
    proc = evaluate(tiny_bundle, out, "--concept", "dots", "--seeds", "1")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    row = metrics["rows"][0]
    assert row["removed"] == ["dots"] and {"UA", "IRA", "CRA", "CRA_unstyled", "judge_fd_retained", "collateral_mae"} <= set(row)
    assert metrics["summary"]["style"]["UA"] == row["UA"]
    assert metrics["cost"]["extra_storage_mb"] > 0 and metrics["peak_rss_mb"] > 0
    assert "| style (ours, MiniCanvas)" in (out / "table.md").read_text()
    assert "plotly" in (out / "report.html").read_text() or "install plotly" in (out / "report.html").read_text()
    assert (out / "metrics.csv").read_text().count("\n") == 2
    again = evaluate(tiny_bundle, out, "--concept", "dots", "--seeds", "1")
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_reference_row_only(tiny_bundle, tmp_path):
    proc = evaluate(tiny_bundle, tmp_path / "none", "--method", "none", "--seeds", "1")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert metrics["rows"] == [] and 0 <= metrics["reference"]["style_accuracy"] <= 1


@needs_bundled
@pytest.mark.slow
def test_quick_style_benchmark_on_the_bundled_model(tmp_path):
    """Unlearning a style drives its accuracy far below the reference; another style stays close."""
    cmd = [sys.executable, "-m", "saeuron_core.cli", "--threads", "1", "evaluate", "--method", "saeuron", "--domain", "style", "--concept", "stripes", "--quick", "--out", str(tmp_path / "q")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "q" / "metrics.json").read_text())
    row, ref = m["rows"][0], m["reference"]
    assert row["UA"] >= 0.5 and 1 - row["UA"] < ref["style_accuracy"] - 0.4
    assert row["IRA"] >= ref["style_accuracy"] - 0.15
