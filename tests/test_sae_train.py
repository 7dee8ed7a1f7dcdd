"""SAE training on a store: it learns, records what it trained, checkpoints atomically beside the
artefact, stops on SIGTERM and resumes (seeking in the data) to the same SAE, also after kill -9."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import fields

import pytest
import torch
from conftest import start_paused

from saeuron_core.cli import main as cli_main
from saeuron_core.errors import SaeuronError
from saeuron_core.paths import ASSETS
from saeuron_core.sae import SaeConfig, TopKSae, load_many
from saeuron_core.sae_train import STATE_FILE, TrainConfig, train_dir, train_sae
from saeuron_core.store import ActivationStore, PromptItem, cache_activations
from saeuron_core.training import load_state

POINT = "up_blocks.1.attentions.1"


@pytest.fixture(scope="module")
def store(tiny_pipeline_dir, tmp_path_factory):
    from saeuron_core.pipeline import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir))
    items = [
        PromptItem(f"An image of {o} in {s} style.", seed, {"object": o, "style": s})
        for o in ("star", "heart", "circle")
        for s in ("dots", "solid", "rings")
        for seed in range(4)
    ]
    return cache_activations(
        pipe, items, [POINT], tmp_path_factory.mktemp("store"), steps=4, guidance=4.0, items_per_shard=6
    )


def test_training_lowers_fvu_and_saves_sparsify_layout(store, tmp_path):
    cfg = TrainConfig(SaeConfig(expansion_factor=4, k=8), batch_size=64, epochs=3, checkpoint_every=10)
    metrics = train_sae(store, POINT, cfg, tmp_path)
    history = load_state(train_dir(tmp_path, POINT) / STATE_FILE)["history"]
    assert history[-1]["fvu"] < 0.5 * history[0]["fvu"]
    assert metrics["steps"] == 3 * (store.token_count(POINT) // 64)
    # the artefact holds only what sparsify's does; training state and metrics live beside it
    assert sorted(p.name for p in (tmp_path / POINT).iterdir()) == ["cfg.json", "sae.safetensors"]
    assert json.loads((train_dir(tmp_path, POINT) / "metrics.json").read_text())["steps"] == metrics["steps"]
    saved = json.loads((tmp_path / POINT / "cfg.json").read_text())
    assert (saved["d_in"], saved["k"], saved["expansion_factor"], saved["num_latents"]) == (32, 8, 4, 128)
    assert load_many(tmp_path).keys() == {POINT}  # the .train folder is not taken for an SAE
    sae = TopKSae.load(tmp_path / POINT)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.num_latents), atol=1e-5)
    again = train_sae(store, POINT, cfg, tmp_path)  # finished: resuming does nothing more
    assert again["steps"] == metrics["steps"]


def test_train_config_nests_the_sae_config_with_one_set_of_defaults():
    names = {f.name for f in fields(TrainConfig)}
    assert "sae" in names and not names & {
        "k",
        "expansion_factor",
        "num_latents",
        "dead_feature_threshold",
        "auxk_alpha",
    }
    assert TrainConfig().sae == SaeConfig()
    assert (SaeConfig().k, SaeConfig().dead_feature_threshold, SaeConfig().expansion_factor) == (32, 10_000_000, 16)
    with pytest.raises(SaeuronError, match="must be a SaeConfig"):
        TrainConfig(sae={"k": 4})


def test_bundled_saes_still_load():
    # objects at the mid block (128 channels), styles at up_blocks.1.attentions.1 (64 channels)
    for point, d_in in (("mid_block.attentions.0", 128), ("up_blocks.1.attentions.1", 64)):
        sae = TopKSae.load(ASSETS / "sae" / point)
        assert (sae.d_in, sae.num_latents, sae.cfg.k, sae.cfg.expansion_factor) == (d_in, 1024, 16, 1024 // d_in)


def test_cli_records_what_was_trained(store, tmp_path):
    base = [
        "--threads",
        "1",
        "train-sae",
        "--store",
        str(store.root),
        "--point",
        POINT,
        "--k",
        "8",
        "--batch-size",
        "64",
        "--epochs",
        "1",
    ]
    assert cli_main([*base, "--out", str(tmp_path / "a"), "--expansion-factor", "8"]) == 0
    saved = json.loads((tmp_path / "a" / POINT / "cfg.json").read_text())
    assert (saved["expansion_factor"], saved["num_latents"], saved["k"]) == (8, 256, 8)
    assert cli_main([*base, "--out", str(tmp_path / "b"), "--num-latents", "96"]) == 0
    saved = json.loads((tmp_path / "b" / POINT / "cfg.json").read_text())
    assert (saved["expansion_factor"], saved["num_latents"]) == (3, 96)
    assert TopKSae.load(tmp_path / "b" / POINT).num_latents == 96
    assert cli_main([*base, "--out", str(tmp_path / "c"), "--num-latents", "96", "--expansion-factor", "8"]) == 2
    assert not (tmp_path / "c").exists()


def test_sigterm_then_resume_seeks_and_gives_the_same_sae(store, tmp_path, monkeypatch):
    # a low dead threshold so that the AuxK path and the dead-latent counters take part
    cfg = TrainConfig(
        SaeConfig(expansion_factor=4, k=4, dead_feature_threshold=300), batch_size=64, epochs=3, checkpoint_every=25
    )
    straight = train_sae(store, POINT, cfg, tmp_path / "straight")

    def stop_at_60(rec):
        if rec["step"] == 60:
            os.kill(os.getpid(), signal.SIGTERM)  # StopRequest turns it into a checkpoint and a stop

    with pytest.raises(SaeuronError, match="stopped by SIGTERM at step 60"):
        train_sae(store, POINT, cfg, tmp_path / "resumed", log=stop_at_60)
    assert load_state(train_dir(tmp_path / "resumed", POINT) / STATE_FILE)["step"] == 60
    read = []
    original = store.iter_shards
    monkeypatch.setattr(
        store, "iter_shards", lambda point, shards=None: (read.append(list(shards)), original(point, shards))[1]
    )
    resumed = train_sae(store, POINT, cfg, tmp_path / "resumed")
    # 36 batches per epoch in groups of 24 + 12: step 60 is the start of epoch 2's second group,
    # so the resumed run reads that group (2 shards) and epoch 3 (6 shards), nothing before.
    assert sum(len(g) for g in read) == 2 + 6
    assert resumed["steps"] == straight["steps"] == 108
    a, b = TopKSae.load(tmp_path / "straight" / POINT), TopKSae.load(tmp_path / "resumed" / POINT)
    for name, tensor in a.state_dict().items():
        assert torch.allclose(tensor, b.state_dict()[name], atol=1e-6, rtol=1e-5), name
    state_a = load_state(train_dir(tmp_path / "straight", POINT) / STATE_FILE)
    state_b = load_state(train_dir(tmp_path / "resumed", POINT) / STATE_FILE)
    assert torch.equal(state_a["tokens_since_fired"], state_b["tokens_since_fired"])
    assert any(r["dead_fraction"] > 0 for r in state_a["history"])  # AuxK did run
    assert [r["step"] for r in state_a["history"]] == [r["step"] for r in state_b["history"]]
    with pytest.raises(SaeuronError, match="different training config"):
        train_sae(
            store, POINT, TrainConfig(SaeConfig(expansion_factor=4, k=5), batch_size=64, epochs=3), tmp_path / "resumed"
        )


@pytest.mark.slow
def test_kill_9_during_training_then_resume(store, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "saeuron_core.cli",
        "--threads",
        "1",
        "train-sae",
        "--store",
        str(store.root),
        "--out",
        str(tmp_path),
        "--expansion-factor",
        "8",
        "--k",
        "8",
        "--batch-size",
        "32",
        "--epochs",
        "30",
    ]
    every = TrainConfig().checkpoint_every
    total = 30 * (store.token_count(POINT) // 32)
    after = every + every // 4  # past the first checkpoint, before the second: the kill loses steps
    assert total > 2 * every
    proc, pid = start_paused(cmd, after)
    assert pid == proc.pid
    proc.kill()
    proc.communicate()
    state = train_dir(tmp_path, POINT) / STATE_FILE
    assert torch.load(state, weights_only=True)["step"] == every  # the last checkpoint, not the kill's step
    TopKSae.load(tmp_path / POINT)  # the checkpointed SAE is complete and loadable
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert torch.load(state, weights_only=True)["step"] == total
    TopKSae.load(tmp_path / POINT)
    assert not list(tmp_path.rglob("*.tmp"))


def test_an_unfinished_store_is_refused_by_train_sae_and_stats(store, tmp_path, capsys):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(store.root, partial)
    meta = json.loads((partial / "store.json").read_text())
    meta["completed_shards"] = meta["completed_shards"][:1]  # as if caching had stopped after one shard
    (partial / "store.json").write_text(json.dumps(meta))
    n = ActivationStore(partial).n_shards
    assert cli_main(["--threads", "1", "train-sae", "--store", str(partial), "--out", str(tmp_path / "sae")]) == 2
    assert f"holds 1 of {n} shards: finish caching" in capsys.readouterr().err and not (tmp_path / "sae").exists()
    assert (
        cli_main(
            [
                "--threads",
                "1",
                "stats",
                "--store",
                str(partial),
                "--sae",
                str(tmp_path / "sae"),
                "--out",
                str(tmp_path / "stats"),
            ]
        )
        == 2
    )
    assert f"holds 1 of {n} shards" in capsys.readouterr().err
