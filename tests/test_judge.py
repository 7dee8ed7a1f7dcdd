import numpy as np
import pytest
import torch
from conftest import needs_bundled

from saeuron_core import minicanvas as mc
from saeuron_core.errors import SaeuronError
from saeuron_core.minicanvas.build import judge_accuracy
from saeuron_core.minicanvas.judge import Judge, JudgeConfig, augment
from saeuron_core.paths import ASSETS


def test_config_validation_and_save_load_roundtrip(tmp_path):
    with pytest.raises(SaeuronError):
        JudgeConfig(objects=["a"])
    judge = Judge(JudgeConfig(channels=[8, 8])).eval()
    judge.save(tmp_path)
    again = Judge.load(tmp_path)
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(judge(x).style_logits, again(x).style_logits)


def test_load_refuses_a_corrupt_file(tmp_path):
    Judge(JudgeConfig(channels=[8, 8])).save(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(SaeuronError, match="not a readable safetensors file"):
        Judge.load(tmp_path)


def test_augment_keeps_range_and_shape():
    x = torch.rand(8, 3, 64, 64)
    y = augment(x.clone(), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)


@needs_bundled
def test_shipped_judge_is_near_perfect_on_held_out_renders():
    judge = Judge.load(ASSETS / "judge")
    pairs = mc.all_pairs()
    seeds = mc.split_seeds("heldout", 2, offset=500)  # not the seeds the recipe reported on
    images = np.stack([mc.render(o, s, seed) for seed in seeds for o, s in pairs])
    labels = np.array([(mc.OBJECTS.index(o), mc.STYLES.index(s)) for _ in seeds for o, s in pairs])
    acc = judge_accuracy(judge, images, labels)
    assert acc["object"] >= 0.97 and acc["style"] >= 0.97, acc
