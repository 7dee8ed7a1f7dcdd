"""Device plumbing of SAE training and statistics, on the CPU: an explicit device end to end, the
device ``auto`` picks, one clear line for a device that is not here (before the store is read),
each torchrun rank on its own GPU, the prefetching stream, and precision options."""

import threading

import pytest
import torch

from saeuron_core import device as devmod
from saeuron_core.errors import SaeuronError
from saeuron_core.sae import SaeConfig, TopKSae
from saeuron_core.sae_train import STATE_FILE, TrainConfig, train_dir, train_sae
from saeuron_core.stats import compute_stats
from saeuron_core.store import PromptItem, cache_activations
from saeuron_core.training import load_state, save_state

POINT = "up_blocks.1.attentions.0"


@pytest.fixture(scope="module")
def store(tiny_pipeline_dir, tmp_path_factory):
    from saeuron_core.pipeline import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir))
    pipe.set_progress_bar_config(disable=True)
    items = [PromptItem(f"An image of {o}.", seed, {"object": o}) for o in ("star", "heart") for seed in range(3)]
    return cache_activations(
        pipe, items, [POINT], tmp_path_factory.mktemp("store"), steps=3, guidance=4.0, items_per_shard=3
    )


def small(**kw) -> TrainConfig:
    return TrainConfig(SaeConfig(expansion_factor=2, k=4), batch_size=32, epochs=2, checkpoint_every=10**6, **kw)


class Untouchable:
    """A store whose every attribute access fails: proves that nothing was read."""

    def __getattr__(self, name):
        raise AssertionError(f"the store was read ({name}) before the device was checked")


def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def fake_cuda(monkeypatch, count: int = 2):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_explicit_cpu_device_end_to_end(store, tmp_path):
    """train_sae and compute_stats on device="cpu": the same SAE as the default on a CPU-only
    machine, recorded in the metrics, and statistics of it."""
    metrics = train_sae(store, POINT, small(device="cpu"), tmp_path / "cpu")
    assert metrics["device"] == "cpu" and metrics["sparse_ops"] == "cpu"
    sae = TopKSae.load(tmp_path / "cpu" / POINT)
    if not torch.cuda.is_available():
        train_sae(store, POINT, small(), tmp_path / "auto")
        assert torch.equal(TopKSae.load(tmp_path / "auto" / POINT).W_dec, sae.W_dec)
    stats = compute_stats(store, POINT, sae, top_m=2, device="cpu")
    assert stats.frequency.device.type == "cpu" and stats.frequency.sum() > 0
    same = compute_stats(store, POINT, sae, top_m=2)  # None: the SAE's device
    for name in ("frequency", "histogram", "example_value", "example_item", "example_map", "concept_sums"):
        assert torch.equal(getattr(stats, name), getattr(same, name)), name


def test_auto_means_cuda_when_torch_sees_it(monkeypatch):
    fake_cuda(monkeypatch)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert devmod.process_device("auto") == torch.device("cuda")
    assert TrainConfig().device == "auto"
    no_cuda(monkeypatch)
    monkeypatch.setattr(devmod, "_mps_available", lambda: False)
    assert devmod.process_device("auto") == torch.device("cpu")


def test_training_with_auto_goes_to_cuda_when_present(store, tmp_path, monkeypatch):
    """With CUDA reported present, auto trains there: the first CUDA call is the one that fails
    on this CUDA-less build (nothing silently stays on the CPU)."""
    if torch.cuda.is_available():
        pytest.skip("a real GPU is here")
    fake_cuda(monkeypatch, 1)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises((AssertionError, RuntimeError), match="CUDA|cuda"):
        train_sae(store, POINT, small(), tmp_path)


def test_cuda_without_cuda_is_one_line_before_any_work(tmp_path, monkeypatch):
    no_cuda(monkeypatch)
    with pytest.raises(SaeuronError, match=r"--device cuda: .*use --device cpu") as e:
        TrainConfig(device="cuda")
    assert "\n" not in str(e.value)
    sae = TopKSae(SaeConfig(d_in=32, num_latents=64, k=4))
    with pytest.raises(SaeuronError, match="--device cuda:1"):
        train_sae(Untouchable(), POINT, small(device="cpu"), tmp_path, device="cuda:1")
    with pytest.raises(SaeuronError, match="--device cuda"):
        compute_stats(Untouchable(), POINT, sae, device="cuda")
    assert not any(tmp_path.iterdir())


def test_each_torchrun_rank_gets_its_own_gpu(monkeypatch):
    fake_cuda(monkeypatch, 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert devmod.process_device("auto") == torch.device("cuda", 1)  # round-robin over visible GPUs
    assert devmod.process_device("cuda") == torch.device("cuda", 1)
    assert devmod.process_device("cuda:0") == torch.device("cuda", 0)  # a named GPU is kept
    assert devmod.process_device("cpu") == torch.device("cpu")


def test_prefetch_keeps_order_passes_errors_and_stops_its_thread():
    """The threaded path (every device but the CPU), run here with the meta device."""
    batches = [torch.zeros(i + 1, 2) for i in range(5)]
    out = list(devmod.prefetch_to(iter(batches), torch.device("meta")))
    assert [x.shape[0] for x in out] == [1, 2, 3, 4, 5] and all(x.is_meta for x in out)
    pairs = list(devmod.prefetch_to(iter([(torch.zeros(2), torch.ones(3))]), torch.device("meta")))
    assert [tuple(t.shape) for t in pairs[0]] == [(2,), (3,)]

    def failing():
        yield torch.zeros(1)
        raise ValueError("disk gone")

    with pytest.raises(ValueError, match="disk gone"):
        list(devmod.prefetch_to(failing(), torch.device("meta")))
    endless = devmod.prefetch_to((torch.zeros(1) for _ in iter(int, 1)), torch.device("meta"), depth=2)
    next(endless)
    endless.close()
    assert not [t for t in threading.enumerate() if t.name == "saeuron-prefetch"]
    cpu = [torch.ones(1)]
    assert next(devmod.prefetch_to(iter(cpu), torch.device("cpu"))) is cpu[0]  # no thread, no copy


def test_precision_options(store, tmp_path):
    with pytest.raises(SaeuronError, match="float32 or bfloat16"):
        TrainConfig(dtype="float16")
    with pytest.raises(SaeuronError, match="autocast must be"):
        TrainConfig(autocast="fp16")
    assert TrainConfig(dtype="bf16", autocast="bfloat16").autocast == "bf16"
    assert TrainConfig(autocast="none").autocast is None
    m = train_sae(store, POINT, small(device="cpu", dtype="bfloat16", autocast="bf16"), tmp_path / "bf16")
    assert m["fvu"] < 1.0
    assert TopKSae.load(tmp_path / "bf16" / POINT).dtype == torch.bfloat16


def test_a_run_from_before_the_device_options_resumes(store, tmp_path):
    cfg = small(device="cpu")
    first = train_sae(store, POINT, cfg, tmp_path)
    path = train_dir(tmp_path, POINT) / STATE_FILE
    state = load_state(path)
    for new in ("dtype", "autocast"):
        del state["train_config"][new]
    save_state(path, state)
    assert train_sae(store, POINT, cfg, tmp_path)["steps"] == first["steps"]
    assert train_sae(store, POINT, TrainConfig(**{**cfg.__dict__, "tf32": False}), tmp_path)["steps"] == first["steps"]
    with pytest.raises(SaeuronError, match="different training config"):
        train_sae(store, POINT, TrainConfig(**{**cfg.__dict__, "dtype": "bfloat16"}), tmp_path)


def test_the_gather_path_trains_the_same_sae(store, tmp_path, monkeypatch):
    """The training loop with the gather / index_add products (CUDA without triton) gives the
    SAE of the CPU products, up to float rounding."""
    from saeuron_core import sparse_ops

    cfg = small(device="cpu")
    train_sae(store, POINT, cfg, tmp_path / "cpu")
    monkeypatch.setattr(sparse_ops, "select", lambda device, num_latents=0: sparse_ops.get("gather"))
    metrics = train_sae(store, POINT, cfg, tmp_path / "gather")
    assert metrics["sparse_ops"] == "gather"
    a, b = TopKSae.load(tmp_path / "cpu" / POINT), TopKSae.load(tmp_path / "gather" / POINT)
    for name, p in a.named_parameters():
        assert torch.allclose(p, dict(b.named_parameters())[name], atol=1e-4), name
