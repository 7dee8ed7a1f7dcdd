"""Many processes (torch.distributed, gloo on CPU, 2 ranks): the cache, DDP SAE training and the
statistics give what one process gives; a killed run resumes with no partial shard listed; bad
input (ranks that disagree, more ranks than shards, mixed stores) is refused or stated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import start_paused

from saeuron_core import distributed as dist
from saeuron_core.errors import SaeuronError
from saeuron_core.sae import SaeConfig, TopKSae
from saeuron_core.sae_train import STATE_FILE, TrainConfig, train_dir, train_sae
from saeuron_core.stats import compute_stats
from saeuron_core.store import ActivationStore, PromptItem, cache_activations
from saeuron_core.training import load_state

POINTS = ["up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]
ITEMS = [
    PromptItem(f"An image of {o} in {s} style.", seed, {"object": o, "style": s})
    for o in ("star", "heart")
    for s in ("dots", "solid")
    for seed in (1, 2)
]
# AuxK is on from the 2nd step (threshold 100 tokens): the dead-latent path is exercised too
TRAIN = TrainConfig(SaeConfig(expansion_factor=4, k=4, dead_feature_threshold=100), batch_size=64, epochs=2, seed=3)


def tokens_by_key(store: ActivationStore, point: str) -> dict:
    """(prompt, seed, step) -> [H*W, C] map: every (prompt, seed, step, position) token."""
    out = {}
    for shard in store.iter_shards(point):
        for acts, item, step in zip(shard["acts"], shard["item"].tolist(), shard["step"].tolist()):
            it = store.items[item]
            key = (it.prompt, it.seed, step)
            assert key not in out, f"token map {key} stored twice"
            out[key] = acts
    return out


@pytest.fixture(scope="module")
def reference(tiny_pipeline_dir, tmp_path_factory):
    """One process: the store, an SAE trained on it, and its statistics."""
    from saeuron_core.pipeline import load_pipeline

    root = tmp_path_factory.mktemp("one_rank")
    pipe = load_pipeline(str(tiny_pipeline_dir))
    store = cache_activations(pipe, ITEMS, POINTS, root / "store", steps=3, guidance=4.0, items_per_shard=3)
    train_sae(store, POINTS[1], TRAIN, root / "sae")
    return root


def _worker(rank: int, world: int, init_file: str, out: str, pipeline_dir: str, reference: str) -> None:
    torch.set_num_threads(1)
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    out = Path(out)
    try:
        from saeuron_core.pipeline import load_pipeline

        pipe = load_pipeline(pipeline_dir)
        pipe.set_progress_bar_config(disable=True)
        # ranks launched with different flags are refused on every rank, before any work
        try:
            cache_activations(pipe, ITEMS, POINTS, out / "refused", steps=3 + rank, guidance=4.0, items_per_shard=3)
        except SaeuronError as e:
            (out / f"disagree-{rank}.txt").write_text(str(e))
        # the cache on 2 ranks (3 shards: rank 0 writes 0 and 2, rank 1 writes 1)
        store = cache_activations(pipe, ITEMS, POINTS, out / "store", steps=3, guidance=4.0, items_per_shard=3)
        # more ranks than shards: rank 1 idles and says so
        said = []
        cache_activations(pipe, ITEMS[:1], POINTS, out / "one_shard", steps=3, guidance=4.0, log=said.append)
        (out / f"idle-{rank}.json").write_text(json.dumps(said))
        # DDP training on the one-rank store (same data as the reference run)
        ref_store = ActivationStore(Path(reference) / "store")
        metrics = train_sae(ref_store, POINTS[1], TRAIN, out / "sae")
        (out / f"train-{rank}.json").write_text(json.dumps(metrics))
        # hook points on different ranks (--by-point): each rank trains its own point alone
        train_sae(ref_store, POINTS[rank], TRAIN, out / "by_point", data_parallel=False)
        # statistics over both ranks' shards, with the reference SAE
        sae = TopKSae.load(Path(reference) / "sae" / POINTS[1])
        for distinct in ("image", "prompt"):
            stats = compute_stats(ref_store, POINTS[1], sae, top_m=3, distinct=distinct, batch_maps=5)
            if rank == 0:
                stats.save(out / f"stats-{distinct}")
        assert store.is_complete
    except BaseException:
        (out / f"error-{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        tdist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tiny_pipeline_dir, reference, tmp_path_factory):
    """Two gloo processes run the cache, DDP training and statistics (one start-up for all)."""
    out = tmp_path_factory.mktemp("two_ranks")
    mp.spawn(
        _worker, args=(2, str(out / "init"), str(out), str(tiny_pipeline_dir), str(reference)), nprocs=2, join=True
    )
    return out


@pytest.mark.slow
def test_two_rank_cache_holds_the_same_tokens(reference, two_ranks):
    one, two = ActivationStore(reference / "store"), ActivationStore(two_ranks / "store")
    assert two.is_complete and two.completed == one.completed == [0, 1, 2]
    assert not list((two.root / ".parts").glob("*.json"))  # every marker folded into store.json
    assert two.meta["points"] == one.meta["points"] and two.meta["timesteps"] == one.meta["timesteps"]
    for point in POINTS:
        a, b = tokens_by_key(one, point), tokens_by_key(two, point)
        assert a.keys() == b.keys() and len(a) == len(ITEMS) * 3
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_rank_ddp_training_gives_the_one_process_sae(reference, two_ranks):
    one, two = TopKSae.load(reference / "sae" / POINTS[1]), TopKSae.load(two_ranks / "sae" / POINTS[1])
    for name, p in one.state_dict().items():
        assert torch.allclose(p, two.state_dict()[name], atol=1e-5, rtol=1e-4), name
    s1, s2 = (
        load_state(train_dir(reference / "sae", POINTS[1]) / STATE_FILE),
        load_state(train_dir(two_ranks / "sae", POINTS[1]) / STATE_FILE),
    )
    assert s1["step"] == s2["step"] > 0
    assert torch.equal(s1["tokens_since_fired"], s2["tokens_since_fired"])  # dead-latent counters all-reduced
    assert [round(h["fvu"], 4) for h in s1["history"]] == [round(h["fvu"], 4) for h in s2["history"]]
    m0, m1 = (json.loads((two_ranks / f"train-{r}.json").read_text()) for r in (0, 1))
    assert m0["steps"] == m1["steps"] == s1["step"] and m0["ranks"] == 2


@pytest.mark.slow
def test_by_point_trains_each_point_alone_on_its_rank(reference, two_ranks):
    one, alone = TopKSae.load(reference / "sae" / POINTS[1]), TopKSae.load(two_ranks / "by_point" / POINTS[1])
    for name, p in one.state_dict().items():
        assert torch.equal(p, alone.state_dict()[name]), name  # no collective: the one-process computation
    assert TopKSae.load(two_ranks / "by_point" / POINTS[0]).d_in == 32


@pytest.mark.slow
@pytest.mark.parametrize("distinct", ["image", "prompt"])
def test_stats_merged_from_two_ranks_equal_one_process(reference, two_ranks, distinct):
    from saeuron_core.stats import FeatureStats

    store = ActivationStore(reference / "store")
    sae = TopKSae.load(reference / "sae" / POINTS[1])
    one = compute_stats(store, POINTS[1], sae, top_m=3, distinct=distinct, batch_maps=5)
    two = FeatureStats.load(two_ranks / f"stats-{distinct}")
    assert torch.allclose(one.concept_sums, two.concept_sums, atol=1e-5)
    for name in (
        "concept_counts",
        "frequency",
        "histogram",
        "example_value",
        "example_item",
        "example_step",
        "example_pos",
        "example_map",
    ):
        assert torch.equal(getattr(one, name), getattr(two, name)), name
    assert (one.example_item >= 0).sum() > 0


@pytest.mark.slow
def test_bad_input_across_ranks(two_ranks):
    for rank in (0, 1):
        assert "ranks disagree on the cache plan" in (two_ranks / f"disagree-{rank}.txt").read_text()
    assert not (two_ranks / "refused" / "store.json").exists()  # refused before any work
    assert json.loads((two_ranks / "idle-0.json").read_text()) == []
    (line,) = json.loads((two_ranks / "idle-1.json").read_text())
    assert "rank 1 of 2 has no shard" in line and "idles" in line
    assert ActivationStore(two_ranks / "one_shard").is_complete


def test_stats_builders_merge_exactly_in_one_process(reference, monkeypatch):
    """The merge itself, without processes: statistics of shards {0, 2} and {1}, merged, equal
    those of all shards; with distinct="prompt" an example group spans both parts."""
    from saeuron_core.stats import StatsBuilder

    store = ActivationStore(reference / "store")
    torch.manual_seed(1)
    sae = TopKSae(SaeConfig(d_in=32, num_latents=48, k=5))
    built = []
    finish = StatsBuilder.finish
    monkeypatch.setattr(StatsBuilder, "finish", lambda self, **meta: (built.append(self), finish(self, **meta))[1])
    for shards in ([0, 2], [1]):
        compute_stats(store, POINTS[0], sae, top_m=4, distinct="prompt", shards=shards, batch_maps=4)
    monkeypatch.undo()
    whole = compute_stats(store, POINTS[0], sae, top_m=4, distinct="prompt", batch_maps=4)
    built[0].merge(built[1:])
    merged = built[0].finish(
        **{
            k: getattr(whole, k)
            for k in ("concepts", "concept_kinds", "timesteps", "items", "guidance", "distinct", "concept_counts")
        }
    )
    assert torch.allclose(whole.concept_sums, merged.concept_sums, atol=1e-5)
    for name in (
        "frequency",
        "histogram",
        "example_value",
        "example_item",
        "example_step",
        "example_pos",
        "example_map",
    ):
        assert torch.equal(getattr(whole, name), getattr(merged, name)), name


def test_mixing_models_or_points_in_one_store_is_refused(tiny_pipeline_dir, reference, tmp_path):
    import shutil

    from saeuron_core.pipeline import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir))
    root = tmp_path / "store"
    shutil.copytree(reference / "store", root)
    meta = json.loads((root / "store.json").read_text())
    meta["model"] = "model-a"
    (root / "store.json").write_text(json.dumps(meta))
    with pytest.raises(SaeuronError, match="written with model 'model-a', not 'model-b'"):
        cache_activations(pipe, ITEMS, POINTS, root, steps=3, guidance=4.0, items_per_shard=3, model_name="model-b")
    with pytest.raises(SaeuronError, match="store of hook points"):
        cache_activations(pipe, ITEMS, POINTS[:1], root, steps=3, guidance=4.0, items_per_shard=3, model_name="model-a")
    # a completion marker from another model (other block shapes) is refused, not listed
    meta["completed_shards"] = [0, 1]
    (root / "store.json").write_text(json.dumps(meta))
    (root / ".parts").mkdir()
    other = {p: {"channels": 64, "height": 4, "width": 4} for p in POINTS}
    (root / ".parts" / "shard-00002.json").write_text(
        json.dumps({"shard": 2, "points": other, "timesteps": meta["timesteps"]})
    )
    with pytest.raises(SaeuronError, match="stores of different models cannot be mixed"):
        cache_activations(pipe, ITEMS, POINTS, root, steps=3, guidance=4.0, items_per_shard=3, model_name="model-a")
    assert json.loads((root / "store.json").read_text())["completed_shards"] == [0, 1]


def test_one_process_helpers_are_the_identity():
    assert not dist.active() and (dist.rank(), dist.world()) == (0, 1)
    t = torch.arange(3.0)
    assert torch.equal(dist.all_reduce(t), t) and dist.all_gather(t)[0] is t
    assert dist.split(7, 1, 3) == [1, 4] and dist.split(2, 2, 3) == []
    dist.raise_together(None)
    with pytest.raises(SaeuronError, match="boom"):
        dist.raise_together("boom")


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid``, whichever of its threads started them."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


@pytest.mark.slow
def test_torchrun_cache_killed_mid_run_resumes_to_the_same_tokens(tiny_pipeline_dir, reference, tmp_path):
    """`python -m torch.distributed.run --nproc-per-node 2 -m saeuron_core cache` with one rank
    SIGKILLed once a shard is done (torchrun then stops the other); the store then lists only whole
    shards, and the same command completes it to the one-process tokens."""
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(
        "prompt,seed,object,style\n"
        + "".join(f"{it.prompt},{it.seed},{it.labels['object']},{it.labels['style']}\n" for it in ITEMS)
    )
    out = tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "saeuron_core",
        "--threads",
        "1",
        "cache",
        "--model",
        str(tiny_pipeline_dir),
        "--steps",
        "3",
        "--guidance",
        "4",
        "--prompts",
        str(prompts),
        "--items-per-shard",
        "1",
        "--out",
        str(out),
    ]
    cmd[cmd.index("cache") + 1 : cmd.index("cache") + 1] = sum((["--point", p] for p in POINTS), [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc, paused = start_paused(cmd, after=1, env=env)  # a rank has written its first shard
    workers = children_of(proc.pid)
    assert paused in workers and len(workers) == 2
    os.kill(paused, signal.SIGKILL)  # one rank dies mid-run
    proc.communicate(timeout=120)
    for pid in workers:  # torchrun stops the survivor; make sure before the rerun
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed = ActivationStore(out)
    assert not killed.is_complete, "the run finished before it could be killed"
    for shard in killed.completed:  # whatever is listed is whole
        for point in POINTS:
            assert next(killed.iter_shards(point, [shard]))["acts"].shape[0] == 3
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8/8 shards (2 ranks)" in done.stdout
    resumed, one = ActivationStore(out), ActivationStore(reference / "store")
    for point in POINTS:
        a, b = tokens_by_key(one, point), tokens_by_key(resumed, point)
        assert a.keys() == b.keys()
        # one image per batch here, three in the reference: the same tokens up to batching round-off
        assert all(torch.allclose(a[k].float(), b[k].float(), atol=2e-3, rtol=1e-3) for k in a)
