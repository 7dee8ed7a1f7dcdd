"""`locate` finds the block that carries a word, on a tiny random U-Net built to have one."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import make_tiny_pipeline

from saeuron_core.errors import SaeuronError
from saeuron_core.locate import (
    CHART_FILE,
    CHART_NEEDS_APP,
    CONDITIONS,
    SwapCase,
    chart_available,
    check_blocks,
    cross_attention_blocks,
    locate,
    write_locate,
)


def only_block_reads_text(pipe, keep: str):
    """Silence cross-attention everywhere but ``keep``: text then enters only there."""
    for name in cross_attention_blocks(pipe.unet):
        if name == keep:
            continue
        block = dict(pipe.unet.named_modules())[name]
        for tb in block.transformer_blocks:
            torch.nn.init.zeros_(tb.attn2.to_out[0].weight)
            torch.nn.init.zeros_(tb.attn2.to_out[0].bias)


def test_cross_attention_blocks_run_order_and_bad_names():
    pipe = make_tiny_pipeline()
    blocks = cross_attention_blocks(pipe.unet)
    assert blocks == [
        "down_blocks.0.attentions.0",
        "down_blocks.1.attentions.0",
        "mid_block.attentions.0",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
        "up_blocks.2.attentions.0",
        "up_blocks.2.attentions.1",
    ]
    assert check_blocks(pipe.unet, ["unet.mid_block.attentions.0"]) == ["mid_block.attentions.0"]
    with pytest.raises(
        SaeuronError,
        match=r"not a cross-attention block: up_blocks.0.resnets.0; "
        r"valid blocks: down_blocks.0.attentions.0, .*mid_block",
    ):
        check_blocks(pipe.unet, ["up_blocks.0.resnets.0"])


def _small_result() -> dict:
    """A one-kind, one-block result in the layout ``locate`` returns."""
    cells = {
        "wrong_here": {"image_change": 0.8, "output_change": 0.3, "shows": None},
        "right_here": {"image_change": 0.1, "shows": None},
    }
    kind = {
        "cases": 2,
        "right": {"shows": None},
        "wrong": {"shows": None, "image_change": 1.0},
        "per_block": {"mid_block.attentions.0": cells},
    }
    return {
        "blocks": ["mid_block.attentions.0"],
        "conditions": list(CONDITIONS),
        "judged": False,
        "kinds": {"object": kind},
    }


def test_without_plotly_locate_writes_its_table_and_refuses_only_the_chart(tmp_path, monkeypatch):
    # bug: a core install (no `app` extra) crashed on the first partial write, after the computation
    assert chart_available()  # the dev install has plotly: the chart is drawn
    drawn = write_locate(_small_result(), tmp_path / "with")
    assert [p.name for p in drawn] == ["locate.json", "locate.md", CHART_FILE]
    monkeypatch.setitem(sys.modules, "plotly", None)  # what a missing package looks like to import
    assert not chart_available()
    written = write_locate(_small_result(), tmp_path / "without")
    assert [p.name for p in written] == ["locate.json", "locate.md"]
    assert not (tmp_path / "without" / CHART_FILE).exists()
    assert json.loads(written[0].read_text())["blocks"] == ["mid_block.attentions.0"]
    assert "mid_block.attentions.0" in written[1].read_text()
    with pytest.raises(SaeuronError, match=r"needs plotly, from the app extra"):
        write_locate(_small_result(), tmp_path / "asked", chart=True)
    assert not (tmp_path / "asked").exists()  # refused before anything was written


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["mid_block.attentions.0", "up_blocks.2.attentions.1"])
def test_locate_finds_the_block_that_carries_the_word(keep):
    torch.manual_seed(0)
    pipe = make_tiny_pipeline()
    only_block_reads_text(pipe, keep)
    cases = [
        SwapCase("object", "An image of star in dots style.", "An image of heart in dots style.", "star", s)
        for s in (0, 1)
    ]
    cases += [SwapCase("style", "An image of star in dots style.", "An image of star in rings style.", "dots", 3)]
    calls = []
    shows = lambda images, labels, kind: calls.append(kind) or [True] * len(labels)  # noqa: E731
    result = locate(pipe, cases, steps=2, guidance=4.0, shows=shows, batch_size=2)
    assert set(result["kinds"]) == {"object", "style"} and result["kinds"]["object"]["cases"] == 2
    for kind, entry in result["kinds"].items():
        for block, cells in entry["per_block"].items():
            carries = block == keep
            # swapping the word only here moves the image all the way to the swapped prompt's image
            assert cells["wrong_here"]["image_change"] == pytest.approx(1.0 if carries else 0.0, abs=1e-4), (
                kind,
                block,
            )
            # the right word only here restores the right image
            assert cells["right_here"]["image_change"] == pytest.approx(0.0 if carries else 1.0, abs=1e-4), (
                kind,
                block,
            )
            assert (cells["wrong_here"]["output_change"] > 1e-4) == carries
    assert calls and result["judged"] and result["kinds"]["object"]["per_block"][keep]["wrong_here"]["shows"] == 1.0


@pytest.mark.slow
def test_locate_command_on_a_foreign_folder(tiny_pipeline_dir, tmp_path):
    base = [
        sys.executable,
        "-m",
        "saeuron_core.cli",
        "--threads",
        "1",
        "locate",
        "--model",
        str(tiny_pipeline_dir),
        "--steps",
        "2",
    ]
    case = ["--case", "object:An image of star.|An image of heart."]
    proc = subprocess.run(
        base
        + case
        + ["--block", "mid_block.attentions.0", "--block", "up_blocks.1.attentions.1", "--out", str(tmp_path / "loc")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "loc" / "locate.json").read_text())
    assert (
        result["blocks"] == ["mid_block.attentions.0", "up_blocks.1.attentions.1"]
        and not result["judged"]
        and not result.get("partial")
    )
    assert "plotly" in (tmp_path / "loc" / "heatmap.html").read_text()
    bad = subprocess.run(
        base + case + ["--block", "conv_in", "--out", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and "not a cross-attention block: conv_in; valid blocks:" in bad.stderr
    none = subprocess.run(base + ["--out", str(tmp_path / "none")], capture_output=True, text=True, timeout=600)
    assert none.returncode == 2 and "pass --case" in none.stderr
    # a core install without plotly: one line says so before the computation, the table is written
    no_plotly = (
        "import sys; sys.modules['plotly'] = None; from saeuron_core.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    args = [*base[3:], *case, "--block", "mid_block.attentions.0", "--out", str(tmp_path / "core")]
    core = subprocess.run([sys.executable, "-c", no_plotly, *args], capture_output=True, text=True, timeout=600)
    assert core.returncode == 0, core.stderr
    assert core.stdout.splitlines()[0] == CHART_NEEDS_APP
    assert sorted(p.name for p in (tmp_path / "core").iterdir()) == ["locate.json", "locate.md"]
