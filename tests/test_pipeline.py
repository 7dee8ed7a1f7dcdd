import json

import numpy as np
import pytest
from conftest import needs_bundled

from saeuron_core import minicanvas as mc
from saeuron_core.errors import SaeuronError
from saeuron_core.pipeline import (
    generate,
    image_grid,
    load_pipeline,
    model_info,
    model_info_of_folder,
    resolve_spec,
)


def test_foreign_folder_loads_through_the_same_path(tiny_pipeline_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    info = model_info(pipe)
    # a folder without saeuron.json gets SD1.x's hook points (the paper's)
    assert info.hook_points == {"object": "up_blocks.1.attentions.1", "style": "up_blocks.1.attentions.2"}
    assert info.image_size == 8 * pipe.vae_scale_factor
    images = generate(pipe, "An image of star.", [1, 2], steps=2, guidance=3.0, output_type="np")
    assert len(images) == 2 and images[0].shape == (16, 16, 3)


def test_fixed_seed_gives_bit_identical_images(tiny_pipeline_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    prompts = ["An image of star.", "An image of heart."]
    a = generate(pipe, prompts, [5], steps=3, guidance=4.0, output_type="np")
    b = generate(pipe, prompts, [5], steps=3, guidance=4.0, output_type="np")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])
    # each image owns its noise: alone in a batch it is the same up to float reordering
    alone = generate(pipe, prompts[1:], [5], steps=3, guidance=4.0, output_type="np")
    assert np.abs(alone[0] - a[1]).max() < 1e-3


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "model spec is empty"),
        ("no-such-model", "unknown model spec"),
        ("./missing/folder", "unknown model spec"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(SaeuronError, match=message):
        resolve_spec(spec)


def test_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SaeuronError, match="not a diffusers pipeline folder"):
        load_pipeline(str(tmp_path))


def test_hub_ids_are_handed_to_diffusers_and_fail_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_spec("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    with pytest.raises(SaeuronError, match="could not load pipeline"):
        load_pipeline("saeuron-test/does-not-exist")


def test_generation_argument_checks(tiny_pipeline_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    with pytest.raises(SaeuronError, match="steps must be a positive integer"):
        generate(pipe, "x", 0, steps=0, guidance=1.0)
    with pytest.raises(SaeuronError, match="no prompt"):
        generate(pipe, [], 0, steps=1, guidance=1.0)
    with pytest.raises(SaeuronError, match="seeds must be non-negative"):
        generate(pipe, "x", -3, steps=1, guidance=1.0)


def test_image_grid_layout():
    from PIL import Image

    ims = [Image.new("RGB", (4, 4), (i * 40, 0, 0)) for i in range(6)]
    grid = image_grid(ims, 2, 3)
    assert grid.size == (12, 8)
    assert grid.getpixel((8, 4))[0] == 5 * 40
    with pytest.raises(SaeuronError):
        image_grid(ims, 2, 2)


def _folder_with_info(folder, **meta):
    folder.mkdir(exist_ok=True)
    base = {"image_size": 16, "hook_points": {"object": "mid_block.attentions.0"}, "default_steps": 3}
    (folder / "saeuron.json").write_text(json.dumps({**base, "default_guidance": 4.0, **meta}))
    return folder


def test_vocabulary_is_read_by_kind_and_from_older_folders(tmp_path):
    new = model_info_of_folder(_folder_with_info(tmp_path / "new", vocabulary={"animal": ["cat", "dog"], "style": []}))
    assert new.vocabulary == {"animal": ("cat", "dog")}  # a kind without names is left out
    assert new.concepts_of("animal") == ("cat", "dog") and new.concepts_of("object") == ()
    old = model_info_of_folder(_folder_with_info(tmp_path / "old", objects=["star"], styles=["dots", "solid"]))
    assert old.vocabulary == {"object": ("star",), "style": ("dots", "solid")}
    assert model_info_of_folder(_folder_with_info(tmp_path / "plain")).vocabulary == {}


@pytest.mark.parametrize(
    "vocabulary, message",
    [
        (["star"], "vocabulary must map a concept kind to a list of names"),
        ({"object": "star"}, "vocabulary of 'object' must be a list of concept names"),
        ({"object": ["star", ""]}, "vocabulary of 'object' must be a list of concept names"),
    ],
)
def test_a_malformed_vocabulary_is_refused_in_one_line(tmp_path, vocabulary, message):
    with pytest.raises(SaeuronError, match=message):
        model_info_of_folder(_folder_with_info(tmp_path, vocabulary=vocabulary))


@needs_bundled
def test_bundled_model_loads_and_is_deterministic():
    pipe = load_pipeline("minicanvas")
    info = model_info(pipe, "minicanvas")
    assert info.image_size == 64 and info.hook_points["style"].startswith("up_blocks.1.attentions")
    # the bundled saeuron.json lists its vocabulary the older way (top-level objects / styles)
    assert info.concepts_of("object") == tuple(mc.OBJECTS) and info.concepts_of("style") == tuple(mc.STYLES)
    for point in info.hook_points.values():
        assert pipe.unet.get_submodule(point) is not None
    a = generate(pipe, "An image of star in dots style.", 1_000_000, steps=4, guidance=6.0, output_type="np")[0]
    b = generate(pipe, "An image of star in dots style.", 1_000_000, steps=4, guidance=6.0, output_type="np")[0]
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)


@pytest.mark.slow
def test_loading_a_pipeline_logs_no_torchvision_notice(tiny_pipeline_dir):
    """Without torchvision, importing diffusers' pipeline made transformers warn twice (the
    CLIP / SigLIP image processors it never uses); a clean start log has no such line."""
    import subprocess
    import sys

    code = f"from saeuron_core.pipeline import load_pipeline; load_pipeline({str(tiny_pipeline_dir)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "torchvision" not in proc.stderr and "accelerate" not in proc.stderr, proc.stderr
    assert "Loading pipeline components" not in proc.stderr and "Loading weights" not in proc.stderr, proc.stderr
