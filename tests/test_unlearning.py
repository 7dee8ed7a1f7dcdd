"""Unlearning end to end on the tiny bundle (plumbing) and on the bundled model (behaviour)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_POINTS, needs_bundled
from PIL import Image

from saeuron_core.errors import SaeuronError
from saeuron_core.pipeline import generate, load_pipeline, model_info
from saeuron_core.unlearning import SaeBundle, generate_with


def open_bundle(root):
    pipe = load_pipeline(str(root / "model"))
    info = model_info(pipe)
    return pipe, SaeBundle.load(info, root / "sae", root / "stats", root / "defaults.json")


def test_concepts_route_to_their_hook_point_with_defaults(tiny_bundle):
    _, bundle = open_bundle(tiny_bundle)
    assert bundle.kind_of("dots") == "style" and bundle.kind_of("star") == "object"
    ivs = bundle.unlearn(["dots", "star", "solid"])
    by_point = {iv.point: iv for iv in ivs}
    assert by_point[TINY_POINTS["style"]].per_concept() == [("dots", 99.0, -5.0), ("solid", 99.0, -5.0)]
    assert by_point[TINY_POINTS["object"]].per_concept() == [("star", 98.0, -10.0)]
    assert bundle.unlearn(["dots"], tau=90.0, gamma=-2.0)[0].per_concept() == [("dots", 90.0, -2.0)]
    with pytest.raises(SaeuronError, match="unknown concept 'dog'"):
        bundle.unlearn(["dog"])
    with pytest.raises(SaeuronError, match="no default tau/gamma for 'heart'"):
        bundle.unlearn(["heart"])


def test_the_default_variant_replaces_where_its_table_says_and_the_paper_variant_never_does(tiny_bundle):
    from dataclasses import replace as with_fields

    from saeuron_core.baselines.methods import prepare_removal
    from saeuron_core.interventions import Replace, Unlearn

    pipe, bundle = open_bundle(tiny_bundle)
    assert (
        bundle.variant() == "paper" and bundle.variant(paper=True) == "paper"
    )  # a table without a variant: the paper's
    table = {
        **bundle.defaults,
        "variant": "replace-styles",
        "concepts": {
            **bundle.defaults.get("concepts", {}),
            "dots": {"tau": 99.0, "gamma": -5.0, "replace": {"strength": 5.0, "target": "nearest", "latents": "all"}},
        },
    }
    mine = with_fields(bundle, defaults=table)
    ivs = mine.unlearn(["dots", "solid", "star"])
    replaced = [iv for iv in ivs if isinstance(iv, Replace)]
    assert [iv.per_concept() for iv in replaced] == [[("dots", 99.0, 5.0)]] and replaced[0].point == TINY_POINTS[
        "style"
    ]
    assert {c for iv in ivs if isinstance(iv, Unlearn) for c in iv.concepts} == {"solid", "star"}
    assert all(isinstance(iv, Unlearn) for iv in mine.unlearn(["dots"], paper=True))  # the paper's method
    assert all(
        isinstance(iv, Unlearn) for iv in mine.unlearn(["dots"], tau=90.0, gamma=-2.0)
    )  # explicit tau / gamma: the paper's
    info = model_info(pipe)
    default, paper = (prepare_removal(pipe, info, m, ("dots",), bundle=mine) for m in ("saeuron", "saeuron-paper"))
    assert (default.variant, paper.variant) == ("replace-styles", "paper")
    assert (
        default.settings["replace"] == {"dots": {"strength": 5.0, "target": "nearest", "latents": "all"}}
        and "replace" not in paper.settings
    )
    seeds, prompt = [3], ["An image of star in dots style."]
    plain = generate(pipe, prompt, seeds, 2, 3.0, output_type="np")[0]
    with default.active(pipe):
        after = generate(pipe, prompt, seeds, 2, 3.0, output_type="np")[0]
    assert not np.array_equal(plain, after)


def test_a_kind_may_be_removed_at_several_hook_points(tiny_bundle):
    from dataclasses import replace

    from saeuron_core.pipeline import split_hook_points
    from saeuron_core.scoring import tau_for_count

    pipe = load_pipeline(str(tiny_bundle / "model"))
    both = (TINY_POINTS["style"], TINY_POINTS["object"])
    first, every = split_hook_points({"style": list(both), "object": TINY_POINTS["object"]})
    assert first == {"style": both[0], "object": TINY_POINTS["object"]} and every["style"] == both
    info = replace(model_info(pipe), hook_points=first, points_of_kind=every)
    bundle = SaeBundle.load(info, tiny_bundle / "sae", tiny_bundle / "stats", tiny_bundle / "defaults.json")
    ivs = bundle.unlearn(["dots"], gamma=-3.0, count=2)
    assert [iv.point for iv in ivs] == list(both)
    for iv in ivs:
        assert iv.per_concept() == [("dots", tau_for_count(2, bundle.saes[iv.point].num_latents), -3.0)]
    assert [iv.point for iv in bundle.unlearn(["dots"])] == list(both)  # defaults too
    stats = bundle.concept_stats(ivs)
    assert set(stats) == set(both) and all(
        s.concepts == bundle.stats[p].concepts_of_kind("style") for p, s in stats.items()
    )
    plain = generate(pipe, "An image of star in dots style.", [3], 3, 4.0, output_type="np")[0]
    edited = generate_with(pipe, bundle, ivs, ["An image of star in dots style."], [3], 3, 4.0, output_type="np")[0]
    assert np.abs(plain - edited).max() > 0
    with pytest.raises(SaeuronError, match=r"would remove concepts of two kinds \(style and object\)"):
        bundle.unlearn(["dots", "star"])
    with pytest.raises(SaeuronError, match="tau or count"):
        bundle.unlearn(["dots"], tau=99.0, gamma=-1.0, count=1)
    with pytest.raises(SaeuronError, match="hook points of 'style'"):
        split_hook_points({"style": []})


def test_no_intervention_is_bit_identical_and_unlearning_changes_images(tiny_bundle):
    pipe, bundle = open_bundle(tiny_bundle)
    prompt = "An image of star in dots style."
    plain = generate(pipe, prompt, [3], 3, 4.0, output_type="np")[0]
    same = generate_with(pipe, bundle, [], prompt, [3], 3, 4.0, output_type="np")[0]
    assert np.array_equal(plain, same)
    edited = generate_with(
        pipe, bundle, bundle.unlearn(["dots"], tau=50.0, gamma=-30.0), prompt, [3], 3, 4.0, output_type="np"
    )[0]
    assert not np.array_equal(plain, edited)
    again = generate(pipe, prompt, [3], 3, 4.0, output_type="np")[0]
    assert np.array_equal(plain, again)  # hooks are gone


def test_an_unlearn_point_is_normalised_where_it_enters(tiny_bundle):
    from dataclasses import replace

    from saeuron_core.interventions import Unlearn

    pipe, bundle = open_bundle(tiny_bundle)
    style = TINY_POINTS["style"]
    spelled = replace(bundle.unlearn(["dots"])[0], point=f"unet.{style}")  # the paper's spelling
    assert set(bundle.concept_stats([spelled])) == {style}
    one = SaeBundle({style: bundle.saes[style]}, {style: bundle.stats[style]}, {"style": style}, bundle.defaults)
    unnamed = Unlearn(("dots",), 50.0, -30.0)  # point=None: the only SAE
    assert set(one.concept_stats([unnamed])) == {style}
    assert one.placed([unnamed])[0].point == style
    plain = generate(pipe, "An image of star in dots style.", [3], 3, 4.0, output_type="np")[0]
    for bundle_, iv in ((bundle, spelled), (one, unnamed)):
        edited = generate_with(pipe, bundle_, [iv], ["An image of star in dots style."], [3], 3, 4.0, output_type="np")[
            0
        ]
        assert not np.array_equal(plain, edited)
    with pytest.raises(SaeuronError, match="does not name its hook point"):
        bundle.concept_stats([unnamed])
    with pytest.raises(SaeuronError, match="no SAE for hook point 'unet.mid_block'"):
        bundle.concept_stats([replace(unnamed, point="unet.mid_block")])


def test_one_pass_gives_image_maps_and_timesteps_under_any_scheduler(tiny_bundle):
    """``SaeBundle.run`` with Heun (two U-Net evaluations per solver step, repeated timesteps):
    maps have one entry per loop iteration, a StepWindow counts loop indices and statistics rows
    are found by nearest timestep."""
    from diffusers import HeunDiscreteScheduler

    from saeuron_core.interventions import StepWindow

    pipe, bundle = open_bundle(tiny_bundle)
    pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    style = TINY_POINTS["style"]
    prompt = "An image of star in dots style."
    plain = bundle.run(pipe, prompt, 3, 3, 4.0, capture=[style])
    loops = len(pipe.scheduler.timesteps)
    assert loops == 5 and plain.maps[style].shape[0] == loops and len(plain.timesteps) == loops
    assert list(plain.timesteps) == pytest.approx(pipe.scheduler.timesteps.tolist())
    assert np.array_equal(plain.image, np.asarray(generate(pipe, prompt, [3], 3, 4.0)[0].convert("RGB")))
    window = replace_steps(bundle.unlearn(["dots"], tau=50.0, gamma=-30.0), StepWindow(1, 3))
    edited = bundle.run(pipe, prompt, 3, 3, 4.0, window, capture=[style])
    changed = [not torch.equal(a, b) for a, b in zip(plain.maps[style], edited.maps[style])]
    assert changed[0] is False and changed[1] is True  # the edit starts at loop index 1, not before
    assert not np.array_equal(plain.image, edited.image)
    assert "step" not in vars(pipe.scheduler)  # the scheduler is left as it was


def test_a_hooked_run_leaves_nothing_behind_on_errors(tiny_bundle):
    pipe, bundle = open_bundle(tiny_bundle)
    with pytest.raises(RuntimeError, match="stopped"):
        with bundle.hooked(pipe, bundle.unlearn(["dots"]), capture=[TINY_POINTS["object"]]) as recorder:
            assert recorder is not None and "step" in vars(pipe.scheduler)
            raise RuntimeError("stopped")
    assert not {"set_timesteps", "step"} & set(vars(pipe.scheduler))
    for module in pipe.unet.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def replace_steps(interventions, window):
    from dataclasses import replace

    return [replace(iv, steps=window) for iv in interventions]


@pytest.mark.slow
def test_unlearn_command_writes_before_after_grid(tiny_bundle, tmp_path):
    out = tmp_path / "pair.png"
    base = [
        sys.executable,
        "-m",
        "saeuron_core.cli",
        "--threads",
        "1",
        "unlearn",
        "--model",
        str(tiny_bundle / "model"),
        "--sae",
        str(tiny_bundle / "sae"),
        "--stats",
        str(tiny_bundle / "stats"),
        "--defaults",
        str(tiny_bundle / "defaults.json"),
    ]
    proc = subprocess.run(
        base
        + [
            "--concept",
            "dots",
            "--prompt",
            "An image of star in dots style.",
            "--seed",
            "1",
            "--seed",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "removal variant: paper" in proc.stdout  # the output names the variant
    assert Image.open(out).size == (4 * 16, 16)
    bad = subprocess.run(
        base + ["--concept", "vangogh", "--prompt", "x", "--out", str(tmp_path / "b.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "unknown concept 'vangogh'" in bad.stderr and "Traceback" not in bad.stderr
    half = subprocess.run(
        base + ["--concept", "dots", "--tau", "99", "--out", str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert half.returncode == 2 and "both --tau and --gamma" in half.stderr


def test_missing_sae_is_a_clear_error(tiny_bundle, tmp_path):
    pipe = load_pipeline(str(tiny_bundle / "model"))
    with pytest.raises(SaeuronError, match="no SAE for hook point"):
        SaeBundle.load(model_info(pipe), tmp_path, tiny_bundle / "stats")


@needs_bundled
@pytest.mark.slow
def test_unlearning_a_style_on_the_bundled_model_changes_it_and_spares_others():
    from saeuron_core import minicanvas as mc

    pipe = load_pipeline("minicanvas")
    info = model_info(pipe, "minicanvas")
    bundle = SaeBundle.load(info)
    seeds = mc.split_seeds("heldout", 2)
    target = [mc.prompt(o, "stripes") for o in mc.OBJECTS[:3]]
    others = [mc.prompt(o, s) for o in mc.OBJECTS[:3] for s in ("dots", "solid")]
    steps, g = info.default_steps, info.default_guidance
    before = np.stack(generate(pipe, target + others, seeds, steps, g, output_type="np"))
    after = np.stack(
        generate_with(pipe, bundle, bundle.unlearn(["stripes"]), target + others, seeds, steps, g, output_type="np")
    )
    diff = np.abs(before - after).mean(axis=(1, 2, 3))
    n_target = len(target) * len(seeds)
    assert diff[:n_target].mean() > 3 * diff[n_target:].mean()
