"""`saeuron prepare` end to end on a Stable Diffusion-architecture folder written by diffusers'
own save_pretrained: prepare -> `saeuron-explorer --run` -> rank features -> generate with an
ablation (issue 11's goal: under 5 minutes on CPU)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from saeuron_core.cli import main

CONCEPTS = """prompt,seed,animal,painter
An image of star in dots style.,1,star,dots
An image of heart in dots style.,2,heart,dots
An image of circle in dots style.,3,circle,dots
An image of star in solid style.,4,star,solid
An image of heart in solid style.,5,heart,solid
An image of circle in solid style.,6,circle,solid
"""


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from conftest import make_sd_architecture_pipeline

    folder = tmp_path_factory.mktemp("sd_architecture")
    make_sd_architecture_pipeline(latent_size=32).save_pretrained(folder)  # 64 px (VAE factor 2)
    return folder


def one_line(err: str) -> bool:
    return len([line for line in err.splitlines() if line.startswith("saeuron")]) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_prepare_then_explorer_run_rank_and_ablate(sd_folder, tmp_path, capsys):
    from explorer.app import open_session, parse_args
    from explorer.context import Explorer
    from saeuron_core.interventions import ScaleFeatures

    start = time.perf_counter()
    concepts = tmp_path / "concepts.csv"
    concepts.write_text(CONCEPTS)
    run = tmp_path / "run"
    argv = [
        "--threads",
        "1",
        "prepare",
        "--model",
        str(sd_folder),
        "--concepts",
        str(concepts),
        "--height",
        "64",
        "--width",
        "64",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--kind-point",
        "painter=up_blocks.1.attentions.2",
        "--out",
        str(run),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[3/4] stats" in out and "3 animal concept(s), 2 painter concept(s)" in out
    spec = json.loads((run / "run.json").read_text())
    assert (
        spec["complete"]
        and spec["hook_points"]["painter"] == "up_blocks.1.attentions.2"
        and spec["hook_points"]["animal"] == "up_blocks.1.attentions.1"
    )
    assert (spec["height"], spec["width"], spec["steps"]) == (64, 64, 2)

    # rerunning resumes: every stage is found finished
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "resuming" in again and "trained already" in again and "computed already" in again

    session = open_session(parse_args(["--run", str(run), "--device", "cpu", "--dtype", "float32", "--threads", "1"]))
    ex = Explorer.build(session, tmp_path / "maps")
    assert session.info.hook_points["painter"] == "up_blocks.1.attentions.2"
    ranked = ex.features.rank("up_blocks.1.attentions.2", concept="dots", limit=3)
    assert len(ranked) == 3 and ranked[0].score >= ranked[-1].score
    recipe = session.default_recipe("An image of star in dots style.")
    assert recipe.steps == 2
    plain = session.render(recipe)
    ablated = session.render(
        recipe.with_interventions(
            [ScaleFeatures(tuple(r.feature for r in ranked), 0.0, point="up_blocks.1.attentions.2")]
        )
    )
    assert plain.shape == ablated.shape == (64, 64, 3)
    assert not np.array_equal(plain, ablated)
    # removal by concept name routes through the run's kinds (explicit tau/gamma: no table for this model)
    interventions = session.bundle.unlearn(["dots"], tau=99.0, gamma=-5.0)
    assert [iv.point for iv in interventions] == ["up_blocks.1.attentions.2"]
    assert time.perf_counter() - start < 300  # the goal for this chain on CPU


@pytest.mark.slow
def test_plain_prompt_list_ranks_by_frequency(sd_folder, tmp_path, capsys):
    """A .txt prompt list: statistics without concepts, and the explorer ranks by frequency."""
    from explorer.context import Explorer
    from explorer.features import NO_CONCEPT
    from explorer.session import ExplorerSession

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a star\na heart\na circle\na square\n")
    run = tmp_path / "run"
    assert (
        main(
            [
                "--threads",
                "1",
                "prepare",
                "--model",
                str(sd_folder),
                "--concepts",
                str(prompts),
                "--steps",
                "2",
                "--device",
                "cpu",
                "--point",
                "up_blocks.1.attentions.1",
                "--k",
                "8",
                "--expansion-factor",
                "4",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    assert "no concept labels" in capsys.readouterr().out
    session = ExplorerSession.open(run=run, threads=1)
    ex = Explorer.build(session, tmp_path / "maps")
    ranked = ex.features.rank("up_blocks.1.attentions.1", limit=5)
    freq = [r.frequency for r in ranked]
    assert freq == sorted(freq, reverse=True) and ranked[0].top_concept == NO_CONCEPT
    card = ex.features.card("up_blocks.1.attentions.1", ranked[0].feature, generate_images=False)
    assert card.frequency == freq[0] and card.concept_means == {}
    # existing SAEs (here: this run's) skip training; the run records where they came from
    concepts = tmp_path / "concepts.csv"
    concepts.write_text(CONCEPTS)
    reuse = tmp_path / "reuse"
    assert (
        main(
            [
                "--threads",
                "1",
                "prepare",
                "--model",
                str(sd_folder),
                "--concepts",
                str(concepts),
                "--steps",
                "2",
                "--device",
                "cpu",
                "--point",
                "up_blocks.1.attentions.1",
                "--sae",
                str(run / "sae"),
                "--out",
                str(reuse),
            ]
        )
        == 0
    )
    assert "[2/4] train: skipped" in capsys.readouterr().out and not (reuse / "sae").exists()
    assert json.loads((reuse / "run.json").read_text())["sae"] == str((run / "sae").resolve())


def test_prepare_bad_input_is_one_line_before_work(sd_folder, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,style\nhello,dots\n")
    assert (
        main(
            [
                "--threads",
                "1",
                "prepare",
                "--model",
                str(sd_folder),
                "--concepts",
                str(bad),
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "needs a 'prompt' column (it has text, style)" in err and one_line(err)
    good = tmp_path / "good.csv"
    good.write_text(CONCEPTS)
    assert (
        main(
            [
                "--threads",
                "1",
                "prepare",
                "--model",
                str(sd_folder),
                "--concepts",
                str(good),
                "--height",
                "72",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "height 72 must be a positive multiple of 16" in err and one_line(err)
    assert (
        main(
            [
                "--threads",
                "1",
                "prepare",
                "--model",
                str(sd_folder),
                "--concepts",
                str(good),
                "--kind-point",
                "colour=up_blocks.1.attentions.1",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    assert "no label column" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_explorer_run_flag_refuses_an_unfinished_run(tmp_path):
    from saeuron_core.errors import SaeuronError
    from saeuron_core.prepare import load_run

    with pytest.raises(SaeuronError, match="not a prepared run"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text(
        json.dumps(
            {
                "model": "m",
                "hook_points": {},
                "height": 64,
                "width": 64,
                "steps": 2,
                "guidance": 7.0,
                "sae": "sae",
                "complete": False,
            }
        )
    )
    with pytest.raises(SaeuronError, match="not finished"):
        load_run(tmp_path)


@pytest.mark.slow  # a fresh interpreter importing torch: 5-20 s on a shared machine
def test_gpu_check_skips_cleanly_without_cuda():
    """scripts/gpu_check.sh prints one JSON line {"status": "skipped"} and exits 0 without CUDA."""
    import subprocess
    import sys
    from pathlib import Path

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run, not skip")
    script = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"
    proc = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "skipped" and "no CUDA device" in summary["reason"]


def test_prepare_refuses_a_missing_sae_device_before_any_work(tmp_path, monkeypatch):
    """prepare(sae_device="cuda") without CUDA: one line, before a hook point is looked up or a
    file written (the stages' device defaults to the model's)."""
    import torch

    from saeuron_core.errors import SaeuronError
    from saeuron_core.prepare import RunSpec, prepare

    class Pipe:  # fails on any use but ``device``
        device = torch.device("cpu")

        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name}) before the device was checked")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = RunSpec("m", {"object": "up_blocks.1.attentions.1"}, 64, 64, 2, 7.0, "sae")
    with pytest.raises(SaeuronError, match="--device cuda: .*use --device cpu"):
        prepare(Pipe(), spec, [], tmp_path / "run", sae_device="cuda")
    assert not (tmp_path / "run").exists()


def test_prepare_stages_run_on_an_explicit_train_device_and_auto_follows_the_model(tmp_path, monkeypatch):
    """prepare(train_config=TrainConfig(device=...)) with no sae_device: a named training device
    wins over the model's (it was silently replaced by it), and auto means the model's device."""
    import torch

    import saeuron_core.device
    from saeuron_core.prepare import RunSpec, prepare
    from saeuron_core.sae_train import TrainConfig

    class Chosen(Exception):
        pass

    def spy(spec, flag="--device"):
        raise Chosen(str(spec))

    class Pipe:  # a model on the GPU; fails on any use but ``device``
        device = torch.device("cuda", 0)

        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name}) before the device was chosen")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # TrainConfig(device="cuda") accepts it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(saeuron_core.device, "process_device", spy)
    spec = RunSpec("m", {"object": "up_blocks.1.attentions.1"}, 64, 64, 2, 7.0, "sae")
    for config, expected in [
        (TrainConfig(device="cpu"), "cpu"),
        (TrainConfig(device="cuda:1"), "cuda:1"),
        (TrainConfig(device="auto"), "cuda:0"),
        (None, "cuda:0"),
    ]:
        with pytest.raises(Chosen) as chosen:
            prepare(Pipe(), spec, [], tmp_path / "run", train_config=config)
        assert str(chosen.value) == expected
    with pytest.raises(Chosen, match="^mps$"):  # an explicit sae_device still wins over both
        prepare(Pipe(), spec, [], tmp_path / "run", train_config=TrainConfig(device="cpu"), sae_device="mps")
    assert not (tmp_path / "run").exists()


def test_prepare_train_device_cuda_without_cuda_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # neither the model nor the concepts file exists: the device is checked before either is read
    args = ["--threads", "1", "prepare", "--model", str(tmp_path / "no-model"), "--concepts"]
    args += [str(tmp_path / "no.csv"), "--train-device", "cuda", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "--train-device cuda: " in err and "use --train-device cpu" in err, err
    assert not (tmp_path / "run").exists()
