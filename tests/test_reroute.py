"""Counterfactual rerouting (``interventions.Reroute``, ``saeuron_core.reroute``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_POINTS, needs_bundled

from saeuron_core.errors import SaeuronError
from saeuron_core.interventions import Reroute, StepWindow
from saeuron_core.pipeline import generate, load_pipeline, model_info
from saeuron_core.unlearning import SaeBundle


def open_tiny(root):
    pipe = load_pipeline(str(root / "model"))
    bundle = SaeBundle.load(model_info(pipe), root / "sae", root / "stats", root / "defaults.json")
    return pipe, bundle


def hook_count(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_a_reroute_is_checked_when_made():
    assert Reroute(("dots",), anchor="solid").per_concept() == [("dots", 99.999, "solid")]
    assert Reroute(("dots", "rings"), anchor=["solid", "solid"], tau=[99.0, 98.0]).per_concept() == [
        ("dots", 99.0, "solid"),
        ("rings", 98.0, "solid"),
    ]
    with pytest.raises(SaeuronError, match="cannot be rerouted to itself"):
        Reroute(("dots",), anchor="dots")
    with pytest.raises(SaeuronError, match="detect is a share"):
        Reroute(("dots",), detect=1.5)
    with pytest.raises(SaeuronError, match="anchor needs one value or one per concept"):
        Reroute(("dots", "rings", "solid"), anchor=("solid", "rings"))


def test_rerouting_changes_the_concepts_images_and_leaves_nothing_behind(tiny_bundle):
    pipe, bundle = open_tiny(tiny_bundle)
    prompt, seeds = ["An image of star in dots style."], [3]
    plain = generate(pipe, prompt, seeds, 3, 4.0, output_type="np")[0]
    before = hook_count(pipe.unet)
    always = Reroute(("dots",), anchor="solid", tau=90.0, detect=0.0, point=TINY_POINTS["style"])
    with bundle.hooked(pipe, [always]):
        after = generate(pipe, prompt, seeds, 3, 4.0, output_type="np")[0]
    assert not np.array_equal(plain, after)
    never = Reroute(("dots",), anchor="solid", tau=90.0, detect=0.0, steps=StepWindow(50), point=TINY_POINTS["style"])
    with bundle.hooked(pipe, [never]):
        untouched = generate(pipe, prompt, seeds, 3, 4.0, output_type="np")[0]
    np.testing.assert_array_equal(plain, untouched)
    with pytest.raises(RuntimeError, match="boom"), bundle.hooked(pipe, [always]):
        raise RuntimeError("boom")
    assert hook_count(pipe.unet) == before
    with pytest.raises(SaeuronError, match="not a bare U-Net"), bundle.hooked(pipe.unet, [always]):
        pass
    with (
        pytest.raises(SaeuronError, match="it is removed too"),
        bundle.hooked(pipe, [Reroute(("dots", "solid"), anchor=("solid", "rings"), point=TINY_POINTS["style"])]),
    ):
        pass
    assert hook_count(pipe.unet) == before


def test_the_table_names_rerouting_and_the_paper_variant_never_uses_it(tiny_bundle):
    from dataclasses import replace as with_fields

    from saeuron_core.baselines.methods import prepare_removal
    from saeuron_core.interventions import Unlearn

    pipe, bundle = open_tiny(tiny_bundle)
    block = {"anchor": "solid", "blocks": [TINY_POINTS["style"]], "latents_per_step": 2, "detect": 0.2}
    table = {
        **bundle.defaults,
        "variant": "reroute-styles",
        "concepts": {**bundle.defaults.get("concepts", {}), "dots": {"tau": 99.0, "gamma": -5.0, "reroute": block}},
    }
    mine = with_fields(bundle, defaults=table)
    rerouted = [iv for iv in mine.unlearn(["dots", "star"]) if isinstance(iv, Reroute)]
    assert len(rerouted) == 1 and rerouted[0].per_concept()[0][::2] == ("dots", "solid")
    assert rerouted[0].blocks == (TINY_POINTS["style"],) and rerouted[0].detect == 0.2
    assert all(isinstance(iv, Unlearn) for iv in mine.unlearn(["dots"], paper=True))
    # removing dots and its anchor together: the anchor gives way to the nearest kept style
    both = [iv for iv in with_fields(mine, defaults=_both(table, block)).unlearn(["dots", "solid"])]
    assert [iv.per_concept() for iv in both if isinstance(iv, Reroute)][0][1][2] == "nearest"
    removal = prepare_removal(pipe, model_info(pipe), "saeuron", ("dots",), bundle=mine)
    assert removal.variant == "reroute-styles" and removal.settings["reroute"]["dots"]["anchor"] == "solid"


def _both(table: dict, block: dict) -> dict:
    concepts = dict(table["concepts"])
    concepts["solid"] = {"tau": 99.0, "gamma": -5.0, "reroute": {**block, "anchor": "dots"}}
    return {**table, "concepts": concepts}


@needs_bundled
def test_the_swap_moves_a_prompts_hidden_states_onto_the_anchors():
    """On the bundled text encoder: the swapped context of "... dots style." is nearer to the
    encoding of "... solid style." than to its own, and a prompt without the word is left alone."""
    from saeuron_core.pipeline import text_embeddings
    from saeuron_core.reroute import Swap

    pipe = load_pipeline("minicanvas")
    info = model_info(pipe, "minicanvas")
    swap = Swap(pipe, "style", "dots", "solid", info.vocabulary, match=0.8)
    own, target, other = (
        text_embeddings(pipe, [f"An image of star in {s} style."])[1] for s in ("dots", "solid", "rings")
    )
    found, _ = swap.found(own)
    assert bool(found.all())
    moved, _ = swap.apply(own, torch.ones(1, dtype=torch.bool))
    assert float((moved - target).norm()) < 0.5 * float((own - target).norm())
    assert not bool(swap.found(other)[0].any())
    assert torch.equal(swap.apply(other, torch.ones(1, dtype=torch.bool))[0], other)


@needs_bundled
@pytest.mark.slow
def test_the_default_style_removal_removes_the_style_and_keeps_the_object():
    """The bundled default removal of stripes on its own prompts (sweep-split seeds): the judge
    stops seeing stripes and still sees the shape in at least 3 of 4 images each (the goals are
    90 % and 85 %)."""
    from saeuron_core import minicanvas as mc
    from saeuron_core.minicanvas.evaluation import to_uint8
    from saeuron_core.minicanvas.judge import Judge
    from saeuron_core.paths import ASSETS

    pipe = load_pipeline("minicanvas")
    info = model_info(pipe, "minicanvas")
    bundle = SaeBundle.load(info)
    judge = Judge.load(ASSETS / "judge")
    objects = ("circle", "square", "star", "heart")
    prompts = [mc.prompt(o, "stripes") for o in objects]
    seeds = [mc.prompt_seeds(mc.split_seeds("sweep", 1, offset=7), p)[0] for p in prompts]
    ivs = bundle.unlearn(["stripes"])
    assert any(isinstance(iv, Reroute) for iv in ivs), json.dumps(bundle.default_entry("stripes"))
    with bundle.hooked(pipe, ivs):
        images = [
            generate(pipe, [p], [s], info.default_steps, info.default_guidance, output_type="np")[0]
            for p, s in zip(prompts, seeds)
        ]
    verdicts = judge.classify(to_uint8(np.stack(images)))
    assert sum(s != "stripes" for s in verdicts["style"]) >= 3, verdicts
    assert sum(o == want for o, want in zip(verdicts["object"], objects)) >= 3, verdicts


def test_a_new_batch_size_starts_a_new_detection(tiny_bundle):
    """Detection state from a batch of 2 never meets a later call with a batch of 1 (an attack
    calls the U-Net itself, one row at a time, with no new generation in between)."""
    pipe, bundle = open_tiny(tiny_bundle)
    always = Reroute(("dots",), anchor="solid", tau=90.0, detect=0.0, point=TINY_POINTS["style"])
    prompt = "An image of star in dots style."
    with bundle.hooked(pipe, [always]):
        generate(pipe, [prompt], [1, 2], 2, 4.0, output_type="np")
        latents = torch.randn(1, 4, 8, 8)
        context = pipe.encode_prompt(prompt, "cpu", 1, False)[0]
        for t in (900, 500):
            pipe.unet(latents, t, encoder_hidden_states=context)


def test_a_second_hooked_entry_does_not_encode_the_reference_prompts_again(tiny_bundle):
    pipe, bundle = open_tiny(tiny_bundle)
    reroute = Reroute(("rings",), anchor="solid", tau=90.0, detect=0.0, point=TINY_POINTS["style"])
    calls = []
    handle = pipe.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        with bundle.hooked(pipe, [reroute]):
            pass
        first = len(calls)
        with bundle.hooked(pipe, [reroute]):
            pass
        other_anchor = Reroute(("rings",), anchor="dots", tau=90.0, detect=0.0, point=TINY_POINTS["style"])
        with bundle.hooked(pipe, [other_anchor]):
            pass
    finally:
        handle.remove()
    assert first > 0 and len(calls) - first > 0
    assert len(calls) == 2 * first  # the second entry encoded nothing; the new anchor encoded once


def test_a_prompt_that_asks_for_another_concept_of_the_kind_is_left_alone(tiny_bundle):
    """detect=0 flags every image; a prompt naming another style (read back from its token ids)
    is not rerouted unless heed_prompt is off; a prompt naming no style still gets the fallback."""
    pipe, bundle = open_tiny(tiny_bundle)
    point, seeds = TINY_POINTS["style"], [6]

    def run(prompt, **kw):
        reroute = Reroute(("dots",), anchor="solid", tau=90.0, detect=0.0, point=point, **kw)
        with bundle.hooked(pipe, [reroute]):
            return generate(pipe, [prompt], seeds, 3, 4.0, output_type="np")[0]

    other = "An image of star in rings style."
    plain_other = generate(pipe, [other], seeds, 3, 4.0, output_type="np")[0]
    np.testing.assert_array_equal(run(other), plain_other)
    assert not np.array_equal(run(other, heed_prompt=False), plain_other)
    unstyled = "An image of star."
    assert not np.array_equal(run(unstyled), generate(pipe, [unstyled], seeds, 3, 4.0, output_type="np")[0])
    named = "An image of star in dots style."
    assert not np.array_equal(run(named), generate(pipe, [named], seeds, 3, 4.0, output_type="np")[0])


def test_an_untrusted_context_gets_the_anchor_everywhere_and_a_genuine_prompt_is_untouched_by_the_choice(tiny_bundle):
    """``untrusted`` acts only on contexts without genuine token ids (``prompt_embeds`` here)."""
    from saeuron_core.pipeline import text_embeddings

    pipe, bundle = open_tiny(tiny_bundle)
    point, prompt = TINY_POINTS["style"], "An image of star in dots style."

    def reroute(mode):
        return Reroute(("dots",), anchor="solid", tau=90.0, detect=0.0, point=point, untrusted=mode)

    def by_text(mode):
        with bundle.hooked(pipe, [reroute(mode)]):
            return generate(pipe, [prompt], [7], 3, 4.0, output_type="np")[0]

    def by_embeds(mode):
        embeds = text_embeddings(pipe, [prompt])[1]  # made outside the hooks: no ids behind it
        with bundle.hooked(pipe, [reroute(mode)]):
            return pipe(
                prompt_embeds=embeds,
                num_inference_steps=3,
                guidance_scale=4.0,
                output_type="np",
                generator=torch.Generator().manual_seed(7),
            ).images[0]

    np.testing.assert_array_equal(by_text("anchor"), by_text("swap"))
    assert not np.array_equal(by_embeds("anchor"), by_embeds("swap"))
    with pytest.raises(SaeuronError, match="untrusted must be one of swap, anchor"):
        reroute("ignore")
