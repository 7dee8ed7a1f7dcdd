"""Counterfactual adding (``interventions.PromptAdd``, ``saeuron_core.prompt_add``): the add handle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_POINTS

from saeuron_core.errors import SaeuronError
from saeuron_core.interventions import AddConcept, PromptAdd, StepWindow
from saeuron_core.pipeline import generate, load_pipeline, model_info, text_embeddings
from saeuron_core.prompt_text import TextRecorder
from saeuron_core.prompts import written_in
from saeuron_core.unlearning import ADD_STRENGTH, SaeBundle

VOCABULARY = {"object": ("star", "heart", "circle"), "style": ("dots", "solid", "rings")}


def open_tiny(root):
    pipe = load_pipeline(str(root / "model"))
    bundle = SaeBundle.load(model_info(pipe), root / "sae", root / "stats", root / "defaults.json")
    return pipe, bundle


def hook_count(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize(
    "text, kind, concept, expected",
    [
        ("an image of star .", "style", "dots", "an image of star in dots style ."),
        ("an image of star in solid style .", "style", "dots", "an image of star in dots style ."),
        ("an image of star in dots style .", "style", "dots", "an image of star in dots style ."),
        ("An image of Star in solid style.", "object", "circle", "An image of circle in solid style."),
        ("a photo of a dog", "style", "dots", "a photo of a dog in dots style"),
        ("a dog!!", "object", "heart", "a dog with heart!!"),
        ("", "style", "rings", "in rings style"),
        ("starry night", "object", "heart", "starry night with heart"),  # a word, not a substring
    ],
)
def test_a_concept_is_written_into_a_prompt(text, kind, concept, expected):
    assert written_in(text, kind, concept, VOCABULARY) == expected


def test_a_prompt_add_is_checked_when_made():
    assert PromptAdd(["dots"]).concepts == ("dots",)
    with pytest.raises(SaeuronError, match="non-empty list"):
        PromptAdd(())
    with pytest.raises(SaeuronError, match="non-empty list"):
        PromptAdd("dots")
    with pytest.raises(SaeuronError, match="named twice"):
        PromptAdd(("dots", "dots"))
    for bad in (0.0, -1.0, 3.5, float("nan")):
        with pytest.raises(SaeuronError, match="strength must be in"):
            PromptAdd(("dots",), bad)


def test_the_recorder_finds_the_ids_behind_a_context_and_nothing_else(tiny_bundle):
    pipe, _ = open_tiny(tiny_bundle)
    recorder = TextRecorder()
    handle = pipe.text_encoder.register_forward_hook(recorder.hook, with_kwargs=True)
    try:
        ids, hidden = text_embeddings(pipe, ["An image of star.", "An image of heart in dots style."])
    finally:
        handle.remove()
    context = torch.cat([hidden[1:], hidden[:1], torch.randn_like(hidden[:1])]).half()
    found = recorder.ids_of(context)
    assert torch.equal(found[0], ids[1]) and torch.equal(found[1], ids[0]) and found[2] is None
    with recorder.pause():
        recorder.hook(None, (ids,), {}, (hidden,))
    assert len(recorder.calls) == 1


def test_every_block_at_strength_one_is_the_rewritten_prompt(tiny_bundle):
    """The text reaches the U-Net only through its cross-attention blocks: re-running every one
    with the rewritten prompt's context must give that prompt's image (conditional half), and a
    prompt that names the concept already is left exactly as it was."""
    pipe, bundle = open_tiny(tiny_bundle)
    seeds = [5]
    written = generate(pipe, ["An image of star in dots style."], seeds, 3, 4.0, output_type="np")[0]
    plain = generate(pipe, ["An image of star."], seeds, 3, 4.0, output_type="np")[0]
    assert not np.allclose(plain, written, atol=1e-3)
    add = PromptAdd(("dots",), point=TINY_POINTS["style"])
    with bundle.hooked(pipe, [add]):
        added = generate(pipe, ["An image of star."], seeds, 3, 4.0, output_type="np")[0]
        named = generate(pipe, ["An image of star in dots style."], seeds, 3, 4.0, output_type="np")[0]
    np.testing.assert_allclose(added, written, atol=1e-4)
    np.testing.assert_array_equal(named, written)
    object_add = PromptAdd(("circle",), point=TINY_POINTS["object"])
    with bundle.hooked(pipe, [object_add]):
        swapped = generate(pipe, ["An image of star in dots style."], seeds, 3, 4.0, output_type="np")[0]
    circle = generate(pipe, ["An image of circle in dots style."], seeds, 3, 4.0, output_type="np")[0]
    np.testing.assert_allclose(swapped, circle, atol=1e-4)


def test_fewer_blocks_a_window_or_a_lower_strength_add_less(tiny_bundle):
    pipe, bundle = open_tiny(tiny_bundle)
    prompt, seeds = ["An image of heart."], [2]
    plain = generate(pipe, prompt, seeds, 3, 4.0, output_type="np")[0]
    written = generate(pipe, ["An image of heart in rings style."], seeds, 3, 4.0, output_type="np")[0]

    def run(add):
        with bundle.hooked(pipe, [add]):
            return generate(pipe, prompt, seeds, 3, 4.0, output_type="np")[0]

    point = TINY_POINTS["style"]
    never = run(PromptAdd(("rings",), steps=StepWindow(50), point=point))
    np.testing.assert_array_equal(never, plain)
    half = run(PromptAdd(("rings",), 0.5, point=point))
    one_block = run(PromptAdd(("rings",), blocks=("up_blocks.1.attentions.0",), point=point))
    full = np.abs(written - plain).mean()
    for partial in (half, one_block):
        assert 0 < np.abs(partial - plain).mean() and np.abs(partial - written).mean() > 1e-4 * full


def test_prompt_embeds_are_left_alone_and_hooks_leave_nothing_behind(tiny_bundle):
    pipe, bundle = open_tiny(tiny_bundle)
    before = hook_count(pipe.unet) + hook_count(pipe.text_encoder)
    add = PromptAdd(("dots",), point=TINY_POINTS["style"])
    _, embeds = text_embeddings(pipe, ["An image of star."])
    generator = torch.Generator().manual_seed(4)
    plain = pipe(prompt_embeds=embeds, num_inference_steps=3, guidance_scale=4.0, output_type="np", generator=generator)
    with bundle.hooked(pipe, [add]):
        generator = torch.Generator().manual_seed(4)
        kept = pipe(
            prompt_embeds=embeds, num_inference_steps=3, guidance_scale=4.0, output_type="np", generator=generator
        )
    np.testing.assert_array_equal(plain.images, kept.images)
    with pytest.raises(RuntimeError, match="boom"), bundle.hooked(pipe, [add]):
        raise RuntimeError("boom")
    assert hook_count(pipe.unet) + hook_count(pipe.text_encoder) == before
    with pytest.raises(SaeuronError, match="not a bare U-Net"), bundle.hooked(pipe.unet, [add]):
        pass
    with (
        pytest.raises(SaeuronError, match="unknown concept"),
        bundle.hooked(pipe, [PromptAdd(("moon",), point=TINY_POINTS["style"])]),
    ):
        pass


def test_the_add_handle_is_a_prompt_add_per_kind_and_latents_on_request(tiny_bundle):
    _, bundle = open_tiny(tiny_bundle)
    adds = bundle.add_concepts(["dots", "star", "rings"])
    assert {a.point: (a.concepts, a.strength) for a in adds} == {
        TINY_POINTS["style"]: (("dots", "rings"), ADD_STRENGTH),
        TINY_POINTS["object"]: (("star",), ADD_STRENGTH),
    }
    latents = bundle.add_concepts(["dots"], 3.0, latents=True)
    assert [type(a) for a in latents] == [AddConcept] and latents[0].strength == 3.0


def test_a_context_made_from_modified_input_embeddings_has_no_ids(tiny_bundle):
    """A soft-prompt attack inserts its tokens through the input embeddings: the ids it was
    called with do not say what the context holds, so the recorder gives none for it (else a
    prompt naming another style would buy the attack a pass from heed_prompt)."""
    from saeuron_core.baselines.attack import soft_prompt_embeddings

    pipe, _ = open_tiny(tiny_bundle)
    recorder = TextRecorder()
    handle = pipe.text_encoder.register_forward_hook(recorder.hook, with_kwargs=True)
    try:
        soft = torch.randn(1, 2, pipe.text_encoder.config.hidden_size)
        attacked = soft_prompt_embeddings(pipe, ["An image of star in rings style."], soft)
        ids, clean = text_embeddings(pipe, ["An image of star in rings style."])
    finally:
        handle.remove()
    found = recorder.ids_of(torch.cat([attacked, clean]).detach())
    assert found[0] is None and torch.equal(found[1], ids[0])
