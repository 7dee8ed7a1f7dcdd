"""Feature statistics: match a dense brute-force computation, keep diverse examples with quantised
maps, round-trip to disk with thumbnails, work without concepts, and serve feature cards from
what they store."""

import numpy as np
import pytest
import torch

from explorer.features import FeatureExplorer
from saeuron_core.errors import SaeuronError
from saeuron_core.sae import SaeConfig, TopKSae
from saeuron_core.stats import FeatureStats, add_thumbnails, compute_stats
from saeuron_core.store import PromptItem, cache_activations

POINT = "up_blocks.1.attentions.0"
TOP_M = 3


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    from saeuron_core.pipeline import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def setup(pipe, tmp_path_factory):
    items = [
        PromptItem(f"An image of {o} in {s} style.", seed, {"object": o, "style": s})
        for o in ("star", "heart")
        for s in ("dots", "solid", "rings")
        for seed in range(2)
    ]
    items += [PromptItem("An image of star.", 9, {"object": "star"})]
    store = cache_activations(
        pipe, items, [POINT], tmp_path_factory.mktemp("store"), steps=4, guidance=4.0, items_per_shard=5
    )
    torch.manual_seed(0)
    sae = TopKSae(SaeConfig(d_in=32, num_latents=64, k=6))
    # 7 maps per encoder call: an image's 4 steps straddle calls, which the diversity merge must handle
    return store, sae, compute_stats(store, POINT, sae, top_m=TOP_M, batch_maps=7)


@torch.inference_mode()
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
    assert torch.allclose(
        styles.means[0],
        dense[[i for i, it in enumerate(store.items) if it.labels.get("style") == "dots"]].mean(0),
        atol=1e-5,
    )


def test_frequency_and_histogram_match_brute_force(setup):
    store, sae, stats = setup
    fired = dense_codes(store, sae) > 0
    assert torch.allclose(stats.frequency, fired.float().mean((0, 1, 2)))
    assert torch.equal(stats.histogram.sum(1), fired.sum((0, 1, 2)))


def test_top_examples_are_exact_and_diverse(setup):
    """Per latent: the top-M images by their peak (over steps and tokens), one entry per image,
    each at the step and token of that peak, with the map of that step."""
    store, sae, stats = setup
    dense = dense_codes(store, sae)  # [items, T, HW, n]
    for latent in range(sae.num_latents):
        per_image = dense[..., latent].amax((1, 2))  # [items]
        best = per_image.sort(descending=True).values[:TOP_M]
        assert torch.allclose(stats.example_value[latent], best.clamp(min=0), atol=1e-5)
        examples = stats.examples(latent)
        assert len(examples) == int((best > 0).sum())
        assert len({ex.item for ex in examples}) == len(examples)  # never two from one image
        for ex in examples:
            assert float(per_image[ex.item]) == pytest.approx(ex.value, abs=1e-5)
            amap = dense[ex.item, ex.step, :, latent]
            assert float(amap.max()) == pytest.approx(ex.value, abs=1e-5)  # the peak step
            assert float(amap[ex.row * stats.width + ex.col]) == pytest.approx(ex.value, abs=1e-5)  # the peak token
            # 4-bit levels of value / 15 (and fp16 while streaming): within half a level, peak exact
            assert np.abs(ex.activation_map.ravel() - amap.numpy()).max() <= ex.value / 30 + ex.value * 1e-3
            assert ex.activation_map.max() == pytest.approx(ex.value, rel=1e-6)
            assert (store.items[ex.item].prompt, store.items[ex.item].seed) == (ex.prompt, ex.seed)
        empty = stats.example_item[latent, len(examples) :]
        assert (empty == -1).all()


def test_map_levels_round_trip():
    from saeuron_core.stats import pack_levels, unpack_levels

    levels = torch.randint(0, 16, (3, 5, 17), dtype=torch.uint8)
    packed = pack_levels(levels)
    assert packed.shape == (3, 5, 9) and torch.equal(unpack_levels(packed, 17), levels)


def test_distinct_prompts(setup):
    store, sae, _ = setup
    stats = compute_stats(store, POINT, sae, top_m=TOP_M, distinct="prompt", batch_maps=5)
    dense = dense_codes(store, sae)
    prompts = sorted({it.prompt for it in store.items})
    for latent in range(0, sae.num_latents, 5):
        examples = stats.examples(latent)
        assert len({ex.prompt for ex in examples}) == len(examples)
        per_prompt = torch.stack(
            [dense[[i for i, it in enumerate(store.items) if it.prompt == p], ..., latent].amax() for p in prompts]
        )
        assert [ex.value for ex in examples] == pytest.approx(
            per_prompt.sort(descending=True).values[: len(examples)].tolist(), abs=1e-5
        )
    with pytest.raises(SaeuronError, match="distinct must be"):
        compute_stats(store, POINT, sae, distinct="seed")


def test_save_load_round_trip_with_thumbnails(setup, pipe, tmp_path):
    store, sae, stats = setup
    generated = add_thumbnails(pipe, store, [stats], max_side=32)
    assert generated == len(stats.needed_items()) <= len(store.items)
    stats.save(tmp_path)
    again = FeatureStats.load(tmp_path)
    assert again.concepts == stats.concepts and torch.equal(again.example_map, stats.example_map)
    assert again.example_map.dtype == torch.uint8
    for latent in (0, 17):
        for a, b in zip(again.examples(latent), stats.examples(latent)):
            assert np.array_equal(a.activation_map, b.activation_map) and a.item == b.item
    item = stats.needed_items()[0]
    thumb = again.thumbnail(item)
    assert thumb is not None and max(thumb.size) <= 32 and thumb.mode == "RGB"
    assert again.thumbnail(10_000) is None
    with pytest.raises(SaeuronError, match="no feature statistics"):
        FeatureStats.load(tmp_path / "missing")


def test_plain_prompt_list_has_zero_concepts(pipe, tmp_path):
    items = [PromptItem(p, i) for i, p in enumerate(["An image of star.", "An image of heart.", "An image of circle."])]
    store = cache_activations(pipe, items, [POINT], tmp_path / "store", steps=2, guidance=4.0, items_per_shard=2)
    torch.manual_seed(0)
    stats = compute_stats(store, POINT, TopKSae(SaeConfig(d_in=32, num_latents=16, k=4)), top_m=2)
    assert stats.concepts == () and stats.concept_sums.shape == (0, 2, 16) and stats.concept_counts.shape == (0,)
    assert stats.frequency.sum() > 0 and (stats.example_item >= 0).any()
    with pytest.raises(SaeuronError, match="hold no concepts"):
        stats.concept_stats()
    stats.save(tmp_path / "stats")
    assert FeatureStats.load(tmp_path / "stats").concept_sums.shape == (0, 2, 16)
    # the feature card of such statistics: examples, no concept curves, no crash, no generation
    add_thumbnails(pipe, store, [stats], max_side=16)
    card = FeatureExplorer(FakeSession(stats), tmp_path / "maps").card(POINT, int(stats.example_value[:, 0].argmax()))
    assert card.top_concept == "" and card.concept_means == {} and card.activation_by_step == {}
    assert card.patches and not any(p.placeholder for p in card.patches)


class FakeSession:
    """What FeatureExplorer.card reads from a session, with generation forbidden."""

    def __init__(self, stats):
        from types import SimpleNamespace

        from explorer.cache import LruCache

        self.bundle = SimpleNamespace(stats={POINT: stats})
        self.info = SimpleNamespace(image_size=16)
        self.images = LruCache(4)
        self.points = [POINT]

    def check_point(self, point):
        return point

    def plain_images(self, *args, **kwargs):
        raise AssertionError("the feature card must not generate")


def test_mismatched_sae_and_bad_arguments_are_refused(setup):
    store, _, _ = setup
    with pytest.raises(SaeuronError, match="does not match"):
        compute_stats(store, POINT, TopKSae(SaeConfig(d_in=16, num_latents=32, k=4)))
    with pytest.raises(SaeuronError, match="top_m must be"):
        compute_stats(store, POINT, TopKSae(SaeConfig(d_in=32, num_latents=32, k=4)), top_m=0)


def test_old_format_is_refused_with_a_clear_line(tmp_path):
    (tmp_path / "stats.json").write_text('{"bucket_edges": [0]}')
    with pytest.raises(SaeuronError, match="old format"):
        FeatureStats.load(tmp_path)


def test_feature_card_reads_stored_examples_without_generating(tiny_bundle, monkeypatch, tmp_path):
    """The card's images are the stored thumbnails and its maps the stored ones: the pipeline is never called."""
    from explorer.context import Explorer
    from explorer.session import ExplorerSession
    from saeuron_core.store import ActivationStore

    r = tiny_bundle
    session = ExplorerSession.open(
        str(r / "model"), str(r / "sae"), str(r / "stats"), str(r / "defaults.json"), str(r / "judge")
    )
    point = session.points[0]
    stats = session.bundle.stats[point]
    add_thumbnails(session.pipe, ActivationStore(r / "store"), [stats])

    def forbidden(*args, **kwargs):
        raise AssertionError("the feature card must not generate")

    monkeypatch.setattr(session.pipe, "__call__", forbidden)
    monkeypatch.setattr(type(session.pipe), "__call__", forbidden)
    monkeypatch.setattr(session, "plain_images", forbidden)
    monkeypatch.setattr(session.pipe.unet, "forward", forbidden)
    features = Explorer.build(session, tmp_path).features
    feature = int(stats.example_value[:, 0].argmax())
    card = features.card(point, feature, None, None)
    examples = stats.examples(feature)
    assert len(card.patches) == len(examples) > 0
    for patch, ex in zip(card.patches, examples):
        assert not patch.placeholder
        assert (patch.value, patch.prompt, patch.seed, patch.step, patch.row, patch.col) == (
            ex.value,
            ex.prompt,
            ex.seed,
            ex.step,
            ex.row,
            ex.col,
        )
        assert np.array_equal(patch.heatmap, ex.activation_map)
        raw = np.asarray(patch.raw)
        factor = raw.shape[0] // np.asarray(stats.thumbnail(ex.item)).shape[0]
        assert np.array_equal(raw[::factor, ::factor], np.asarray(stats.thumbnail(ex.item)))
        left, top, right, bottom = patch.box
        assert 0 <= left < right <= raw.shape[1] and 0 <= top < bottom <= raw.shape[0]
    assert len({(p.prompt, p.seed) for p in card.patches}) == len(card.patches)


def test_stats_command_device_flag(setup, tmp_path, monkeypatch, capsys):
    """``saeuron stats --device cpu`` gives the library's statistics; ``--device cuda`` without
    CUDA is one line (exit 2) before the store or the SAEs are read, and writes nothing."""
    from saeuron_core.cli import main

    store, sae, stats = setup
    sae.save(tmp_path / "sae" / POINT)
    args = ["--threads", "1", "stats", "--store", str(store.root), "--sae", str(tmp_path / "sae")]
    args += ["--top-m", str(TOP_M), "--no-thumbnails"]
    assert main([*args, "--device", "cpu", "--out", str(tmp_path / "stats")]) == 0
    written = FeatureStats.load(tmp_path / "stats" / POINT)
    assert written.concepts == stats.concepts
    assert torch.allclose(written.concept_sums.float(), stats.concept_sums.float(), atol=1e-4)
    assert torch.allclose(written.frequency.float(), stats.frequency.float())
    capsys.readouterr()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    missing = ["--threads", "1", "stats", "--store", str(tmp_path / "no-store"), "--sae", str(tmp_path / "no-sae")]
    assert main([*missing, "--device", "cuda", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "--device cuda: " in lines[0] and "use --device cpu" in lines[0], err
    assert not (tmp_path / "out").exists()
