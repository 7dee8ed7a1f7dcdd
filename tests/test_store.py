"""Activation store: layout, streaming reads, resume after a crash (also kill -9)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import start_paused

from saeuron_core.errors import SaeuronError
from saeuron_core.pipeline import load_pipeline
from saeuron_core.store import ActivationStore, PromptItem, cache_activations, read_prompt_file

POINTS = ["up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]
ITEMS = [
    PromptItem(f"An image of {o} in {s} style.", seed, {"object": o, "style": s})
    for o in ("star", "heart")
    for s in ("dots", "solid")
    for seed in (1, 2)
]


@pytest.fixture(scope="module")
def tiny_store(tiny_pipeline_dir, tmp_path_factory):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    root = tmp_path_factory.mktemp("store")
    return cache_activations(pipe, ITEMS, POINTS, root, steps=3, guidance=4.0, items_per_shard=3)


def test_layout_and_metadata(tiny_store):
    assert tiny_store.is_complete and tiny_store.n_shards == 3  # 8 items, 3 per shard
    dims = tiny_store.meta["points"][POINTS[1]]
    assert (dims["height"], dims["width"]) == (4, 4) and dims["channels"] == 32
    ts = tiny_store.meta["timesteps"]
    assert len(ts) == 3 and ts == sorted(ts, reverse=True)
    shard = next(tiny_store.iter_shards(POINTS[1], [2]))
    assert shard["acts"].dtype == torch.float16 and shard["acts"].shape == (2 * 3, 16, 32)  # last shard: 2 items
    assert shard["item"].tolist() == [6, 6, 6, 7, 7, 7] and shard["step"].tolist() == [0, 1, 2] * 2
    assert shard["timestep"].tolist() == ts * 2


def test_captures_the_conditional_half(tiny_pipeline_dir, tiny_store):
    """The stored map equals the block output of the conditional half, recomputed by hand."""
    from saeuron_core.hooks import capture_activations
    from saeuron_core.pipeline import generate_jobs

    pipe = load_pipeline(str(tiny_pipeline_dir))
    item = ITEMS[4]
    with capture_activations(pipe.unet, POINTS[0], halves="both") as rec:
        generate_jobs(pipe, [(item.prompt, item.seed)], 3, 4.0, output_type="latent")
    both = rec.stacked(POINTS[0])  # [T, 2, C, H, W]: [uncond, cond]
    shard = next(tiny_store.iter_shards(POINTS[0], [1]))
    rows = shard["item"] == 4
    stored = shard["acts"][rows].float()  # [T, HW, C]
    expected = both[:, 1].permute(0, 2, 3, 1).reshape(3, 16, 32)
    assert torch.allclose(stored, expected, atol=2e-3, rtol=1e-3)


def test_token_batches_stream_every_token(tiny_store):
    total = sum(s["acts"].shape[0] * 16 for s in tiny_store.iter_shards(POINTS[0]))
    assert tiny_store.token_count(POINTS[0]) == total
    batches = list(tiny_store.iter_token_batches(POINTS[0], batch_size=16, shuffle=False, shards_in_memory=1))
    assert all(b.shape == (16, 32) and b.dtype == torch.float32 for b in batches)
    assert sum(len(b) for b in batches) == total  # 16 divides every shard's tokens
    shuffled = torch.cat(list(tiny_store.iter_token_batches(POINTS[0], batch_size=16, seed=1)))
    assert torch.allclose(shuffled.sum(0), torch.cat(batches).sum(0), atol=1e-2)


def test_token_batches_seek_to_a_batch_without_reading_earlier_shards(tiny_store, monkeypatch):
    """start=s gives exactly batches s, s+1, ... of the full stream (shuffled, several epochs,
    shards of unequal size, leftovers dropped), reading only the shards from s's group on."""
    kw = dict(batch_size=20, seed=3, epochs=3, shards_in_memory=2)  # 144 / 144 / 96 tokens per shard
    full = list(tiny_store.iter_token_batches(POINTS[0], **kw))
    per_epoch = len(list(tiny_store.iter_token_batches(POINTS[0], **{**kw, "epochs": 1})))  # the first epoch's
    assert len(full) > 2 * per_epoch >= 20
    read = []
    original = tiny_store.iter_shards
    monkeypatch.setattr(
        tiny_store, "iter_shards", lambda point, shards=None: (read.append(list(shards)), original(point, shards))[1]
    )
    for start in (0, 1, per_epoch - 1, per_epoch, per_epoch + 7, len(full) - 1, len(full)):
        read.clear()
        seeked = list(tiny_store.iter_token_batches(POINTS[0], start=start, **kw))
        assert len(seeked) == len(full) - start
        assert all(torch.equal(a, b) for a, b in zip(seeked, full[start:]))
        if start >= per_epoch:  # the first epoch's shards are not read at all
            assert sum(len(g) for g in read) <= 2 * tiny_store.n_shards


def test_resume_rewrites_only_missing_shards(tiny_pipeline_dir, tiny_store, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_store.root, root)
    meta = json.loads((root / "store.json").read_text())
    meta["completed_shards"] = [0, 2]
    (root / "store.json").write_text(json.dumps(meta))
    os.remove(root / POINTS[0] / "shard-00001.safetensors")
    kept = (root / POINTS[0] / "shard-00000.safetensors").stat().st_mtime_ns
    pipe = load_pipeline(str(tiny_pipeline_dir))
    store = cache_activations(pipe, ITEMS, POINTS, root, steps=3, guidance=4.0, items_per_shard=3)
    assert store.is_complete
    assert (root / POINTS[0] / "shard-00000.safetensors").stat().st_mtime_ns == kept
    again = next(store.iter_shards(POINTS[0], [1]))["acts"]
    original = next(tiny_store.iter_shards(POINTS[0], [1]))["acts"]
    assert torch.equal(again, original)


def test_a_different_plan_is_refused(tiny_pipeline_dir, tiny_store):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    with pytest.raises(SaeuronError, match="different plan"):
        cache_activations(pipe, ITEMS[:2], POINTS, tiny_store.root, steps=3, guidance=4.0, items_per_shard=3)


def test_bad_hook_point_and_missing_store(tiny_pipeline_dir, tmp_path):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    with pytest.raises(SaeuronError, match="does not exist"):
        cache_activations(pipe, ITEMS, ["up_blocks.9.attentions.0"], tmp_path / "s", steps=2, guidance=4.0)
    with pytest.raises(SaeuronError, match="not an activation store"):
        ActivationStore(tmp_path)


def test_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a cat\n\na dog\n")
    assert [(i.prompt, i.seed) for i in read_prompt_file(txt)] == [("a cat", 0), ("a dog", 2)]
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,seed,style\nA cat in Van Gogh style.,7,Van Gogh\nA dog.,8,\n")
    items = read_prompt_file(csv)
    assert items[0].labels == {"style": "Van Gogh"} and items[0].seed == 7 and items[1].labels == {}
    bad = tmp_path / "bad.csv"
    bad.write_text("text\nhello\n")
    with pytest.raises(SaeuronError, match="'prompt' column"):
        read_prompt_file(bad)


@pytest.mark.slow
def test_kill_9_during_cache_then_resume(tiny_pipeline_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"An image of star in dots style. {i}" for i in range(40)))
    out = tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "saeuron_core.cli",
        "--threads",
        "1",
        "cache",
        "--model",
        str(tiny_pipeline_dir),
        "--prompts",
        str(prompts),
        "--steps",
        "4",
        "--guidance",
        "3",
        "--items-per-shard",
        "2",
        "--point",
        POINTS[1],
        "--out",
        str(out),
    ]
    proc, _ = start_paused(cmd, after=2)  # killed right after its second shard is listed
    proc.kill()
    proc.communicate()
    partial = ActivationStore(out)
    assert sorted(partial.completed) == [0, 1] and partial.n_shards == 20
    for s in partial.completed:  # everything listed is complete and loadable
        next(partial.iter_shards(POINTS[1], [s]))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    store = ActivationStore(out)
    assert store.is_complete
    assert sum(s["acts"].shape[0] for s in store.iter_shards(POINTS[1])) == 40 * 4
    assert not list(out.rglob("*.tmp"))


def test_resume_when_killed_before_the_first_shard(tiny_pipeline_dir, tiny_store, tmp_path):
    """A store killed right after its manifest was created (no shard, no shapes yet) resumes."""
    meta = json.loads((tiny_store.root / "store.json").read_text())
    meta.update(points={}, completed_shards=[], timesteps=[])
    root = tmp_path / "fresh"
    root.mkdir()
    (root / "store.json").write_text(json.dumps(meta))
    pipe = load_pipeline(str(tiny_pipeline_dir))
    store = cache_activations(pipe, ITEMS, POINTS, root, steps=3, guidance=4.0, items_per_shard=3)
    assert store.is_complete and store.token_count(POINTS[0]) == tiny_store.token_count(POINTS[0])
