"""SAE training on a store: it learns, checkpoints atomically, and resumes after kill -9."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from saeuron_core.errors import SaeuronError
from saeuron_core.sae import TopKSae
from saeuron_core.sae_train import TrainConfig, train_sae
from saeuron_core.store import ActivationStore, PromptItem, cache_activations

POINT = "up_blocks.1.attentions.1"


@pytest.fixture(scope="module")
def store(tiny_pipeline_dir, tmp_path_factory):
    from saeuron_core.pipeline import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir))
    items = [PromptItem(f"An image of {o} in {s} style.", seed, {"object": o, "style": s}) for o in ("star", "heart", "circle") for s in ("dots", "solid", "rings") for seed in range(4)]
    return cache_activations(pipe, items, [POINT], tmp_path_factory.mktemp("store"), steps=4, guidance=4.0, items_per_shard=6)


def test_training_lowers_fvu_and_saves_sparsify_layout(store, tmp_path):
    cfg = TrainConfig(expansion_factor=4, k=8, batch_size=64, epochs=3, checkpoint_every=10)
    metrics = train_sae(store, POINT, cfg, tmp_path)
    history = torch.load(tmp_path / POINT / "train_state.pt", weights_only=True)["history"]
    assert history[-1]["fvu"] < 0.5 * history[0]["fvu"]
    assert metrics["steps"] == 3 * (store.token_count(POINT) // 64)
    saved = json.loads((tmp_path / POINT / "cfg.json").read_text())
    assert saved["d_in"] == 32 and saved["k"] == 8
    sae = TopKSae.load(tmp_path / POINT)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.num_latents), atol=1e-5)
    again = train_sae(store, POINT, cfg, tmp_path)  # finished: resuming does nothing more
    assert again["steps"] == metrics["steps"]


def test_bad_training_requests(store, tmp_path):
    with pytest.raises(SaeuronError, match="not in the store"):
        train_sae(store, "down_blocks.0", TrainConfig(), tmp_path)
    with pytest.raises(SaeuronError, match="fewer than one batch"):
        train_sae(store, POINT, TrainConfig(batch_size=10**9), tmp_path)
    with pytest.raises(SaeuronError, match="k must be|k=.*exceeds"):
        train_sae(store, POINT, TrainConfig(expansion_factor=1, k=64), tmp_path)
    with pytest.raises(SaeuronError):
        TrainConfig(epochs=0)


def test_kill_9_during_training_then_resume(store, tmp_path):
    cmd = [sys.executable, "-m", "saeuron_core.cli", "--threads", "1", "train-sae", "--store", str(store.root), "--out", str(tmp_path), "--expansion-factor", "8", "--k", "8", "--batch-size", "32", "--epochs", "30"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / POINT / "train_state.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not state.is_file():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.is_file(), "no checkpoint before the kill"
    mid = torch.load(state, weights_only=True)["step"]
    TopKSae.load(tmp_path / POINT)  # the checkpointed SAE is complete and loadable
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    final = torch.load(state, weights_only=True)["step"]
    assert final == 30 * (store.token_count(POINT) // 32) > mid
    TopKSae.load(tmp_path / POINT)
    assert not list(tmp_path.rglob("*.tmp"))
