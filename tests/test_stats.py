"""Feature statistics: match a dense brute-force computation, stay compact, round-trip to disk."""

import pytest
import torch

from saeuron_core.errors import SaeuronError
from saeuron_core.sae import SaeConfig, TopKSae
from saeuron_core.stats import FeatureStats, compute_stats
from saeuron_core.store import PromptItem, cache_activations

POINT = "up_blocks.1.attentions.0"


@pytest.fixture(scope="module")
def setup(tiny_pipeline_dir, tmp_path_factory):
    from saeuron_core.pipeline import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir))
    items = [PromptItem(f"An image of {o} in {s} style.", seed, {"object": o, "style": s}) for o in ("star", "heart") for s in ("dots", "solid", "rings") for seed in range(2)]
    items += [PromptItem("An image of star.", 9, {"object": "star"})]
    store = cache_activations(pipe, items, [POINT], tmp_path_factory.mktemp("store"), steps=4, guidance=4.0, items_per_shard=5)
    torch.manual_seed(0)
    sae = TopKSae(SaeConfig(d_in=32, num_latents=64, k=6))
    return store, sae, compute_stats(store, POINT, sae, top_m=3, n_buckets=2, batch_maps=7)


def dense_codes(store, sae):
    """[n_items, T, HW, n_latents] dense codes, the slow way."""
    n_items, steps = len(store.items), store.meta["steps"]
    out = torch.zeros(n_items, steps, 16, sae.num_latents)
    for shard in store.iter_shards(POINT):
        for acts, item, step in zip(shard["acts"], shard["item"], shard["step"]):
            enc = sae.encode(acts.float())
            out[item, step] = torch.zeros(16, sae.num_latents).scatter(1, enc.top_indices, enc.top_acts)
    return out


def test_concept_means_match_brute_force(setup):
    store, sae, stats = setup
    dense = dense_codes(store, sae).mean(2)  # spatial average: [items, T, n]
    for ci, concept in enumerate(stats.concepts):
        members = [i for i, it in enumerate(store.items) if concept in it.labels.values()]
        assert stats.concept_counts[ci] == len(members)
        assert torch.allclose(stats.concept_sums[ci], dense[members].sum(0), atol=1e-4)
    assert set(stats.concept_kinds) == {"object", "style"}
    styles = stats.concept_stats("style")
    assert styles.concepts == ("dots", "rings", "solid")
    assert torch.allclose(styles.means[0], dense[[i for i, it in enumerate(store.items) if it.labels.get("style") == "dots"]].mean(0), atol=1e-5)


def test_frequency_histogram_and_top_entries(setup):
    store, sae, stats = setup
    dense = dense_codes(store, sae)  # [items, T, HW, n]
    fired = dense > 0
    assert torch.allclose(stats.frequency, fired.float().mean((0, 1, 2)))
    assert torch.equal(stats.histogram.sum(1), fired.sum((0, 1, 2)))
    for latent in range(0, sae.num_latents, 7):
        for bucket, (lo, hi) in enumerate([(0, 2), (2, 4)]):
            per_map = dense[:, lo:hi, :, latent].amax(2)  # [items, steps in bucket]
            best = per_map.flatten().sort(descending=True).values[:3]
            assert torch.allclose(stats.top_values[latent, bucket], best.clamp(min=0), atol=1e-5)
            for slot in range(3):
                if stats.top_values[latent, bucket, slot] > 0:
                    item, step = stats.top_item[latent, bucket, slot], stats.top_step[latent, bucket, slot]
                    amap = dense[item, step, :, latent]
                    assert torch.allclose(stats.top_maps[latent, bucket, slot].float(), amap, atol=1e-2)
                    assert stats.top_pos[latent, bucket, slot] == amap.argmax()
                else:
                    assert stats.top_item[latent, bucket, slot] == -1


def test_save_load_and_compactness(setup, tmp_path):
    store, sae, stats = setup
    stats.save(tmp_path)
    again = FeatureStats.load(tmp_path)
    assert again.concepts == stats.concepts and torch.equal(again.top_maps, stats.top_maps)
    with pytest.raises(SaeuronError, match="no feature statistics"):
        FeatureStats.load(tmp_path / "missing")


def test_mismatched_sae_is_refused(setup):
    store, _, _ = setup
    with pytest.raises(SaeuronError, match="does not match"):
        compute_stats(store, POINT, TopKSae(SaeConfig(d_in=16, num_latents=32, k=4)))
