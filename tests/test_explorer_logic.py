"""The explorer's app logic, called directly on the tiny bundle (no Gradio)."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from explorer.cache import LruCache
from explorer.context import Explorer
from explorer.limits import Limits
from explorer.recipes import (
    Recipe,
    recipe_from_json,
    recipe_from_query,
    recipe_to_json,
    recipe_to_python,
    recipe_to_query,
)
from explorer.session import ExplorerSession
from saeuron_core.errors import SaeuronError
from saeuron_core.hooks import capture_activations, to_tokens
from saeuron_core.interventions import ScaleFeatures, Steer, StepWindow, Unlearn, apply_interventions
from saeuron_core.pipeline import generate
from saeuron_core.scoring import score, select
from saeuron_core.unlearning import SaeBundle

PROMPT = "An image of star in dots style."


@pytest.fixture(scope="module")
def ex(tiny_bundle, tmp_path_factory) -> Explorer:
    r = tiny_bundle
    session = ExplorerSession.open(
        str(r / "model"), str(r / "sae"), str(r / "stats"), str(r / "defaults.json"), str(r / "judge")
    )
    return Explorer.build(session, tmp_path_factory.mktemp("maps"))


@pytest.fixture(scope="module")
def point(ex) -> str:
    return ex.session.points[0]


def recipe(ex, *interventions, **changes) -> Recipe:
    return replace(ex.session.default_recipe(PROMPT), interventions=tuple(interventions), **changes)


# --------------------------------------------------------------------------- ranking
def test_rank_follows_the_method_score(ex, point):
    stats = ex.session.bundle.stats[point]
    expected = score(stats.concept_stats("style"), "dots")[1]
    rows = ex.features.rank(point, "dots", step=1, limit=10)
    assert [r.feature for r in rows] == expected.argsort(descending=True)[:10].tolist()
    assert [r.score for r in rows] == pytest.approx(expected.sort(descending=True).values[:10].tolist())
    assert all(r.frequency == pytest.approx(float(stats.frequency[r.feature])) for r in rows)
    averaged = ex.features.rank(point, "dots", step=None, limit=3)
    assert averaged[0].score == pytest.approx(float(score(stats.concept_stats("style"), "dots").mean(0).max()))


def test_rank_without_concept_uses_each_features_top_concept(ex, point):
    rows = ex.features.rank(point, None, step=0, limit=20)
    assert [r.score for r in rows] == sorted((r.score for r in rows), reverse=True)
    for r in rows[:5]:
        own = ex.features.rank(point, r.top_concept, step=0, limit=200)
        assert next(o.score for o in own if o.feature == r.feature) == pytest.approx(r.score)


def test_selection_counts_match_select_and_shrink_with_the_percentile(ex, point):
    scores = score(ex.session.bundle.stats[point].concept_stats("object"), "star")
    assert ex.features.selection_counts(point, "star", 90) == [len(ids) for ids in select(scores, 90)]
    low, high = ex.features.selection_counts(point, "star", 50), ex.features.selection_counts(point, "star", 99)
    assert all(h <= lo for h, lo in zip(high, low)) and sum(high) < sum(low)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f, p: f.rank(p, "vangogh"), "unknown concept 'vangogh'"),
        (lambda f, p: f.rank(p, "dots", step=99), "step must be in"),
        (lambda f, p: f.rank("up_blocks.9.attentions.0"), "no SAE for hook point"),
        (lambda f, p: f.card(p, 10_000), "feature id must be in"),
        (lambda f, p: f.card(p, -1), "feature id must be in"),
        (lambda f, p: f.selection_counts(p, "dots", 100), "percentile must be in"),
    ],
)
def test_bad_feature_requests_name_the_problem(ex, point, call, message):
    with pytest.raises(SaeuronError, match=message):
        call(ex.features, point)


# --------------------------------------------------------------------------- feature card
def test_card_patches_are_the_stored_diverse_examples_with_deterministic_images(ex, point):
    stats = ex.session.bundle.stats[point]
    feature = ex.features.rank(point, "dots", step=0, limit=1)[0].feature
    for step in (0, 2):
        card = ex.features.card(point, feature, step, "dots")
        stored = stats.examples(feature)
        assert [p.value for p in card.patches] == pytest.approx([e.value for e in stored])
        assert [(p.prompt, p.seed, p.step) for p in card.patches] == [(e.prompt, e.seed, e.step) for e in stored]
        assert len({(p.prompt, p.seed) for p in card.patches}) == len(card.patches)  # one per image
    # the tiny bundle's statistics carry no thumbnails: the fallback regenerates them exactly
    patch = card.patches[0]
    regenerated = np.asarray(
        generate(ex.session.pipe, patch.prompt, [patch.seed], len(stats.timesteps), ex.session.info.default_guidance)[0]
    )
    cached = ex.session.images.get((patch.prompt, patch.seed, len(stats.timesteps), ex.session.info.default_guidance))
    assert np.array_equal(regenerated, cached)
    assert patch.image.size[0] >= 192 and patch.crop.size[0] >= 96


def test_labels_name_the_concept_a_feature_is_most_specific_to(ex, point):
    stats = ex.session.bundle.stats[point]
    means = (stats.concept_sums / stats.concept_counts[:, None, None]).mean(1)  # [C, F]
    labels = ex.features.labels(point)
    assert len(labels) == stats.n_latents
    checked = 0
    for feature in range(stats.n_latents):
        label = labels[feature]
        if not (0 < label.ratio < float("inf")):
            continue
        kind = [i for i, k in enumerate(stats.concept_kinds) if k == label.kind]
        own = means[stats.concepts.index(label.concept), feature]
        others = (means[kind, feature].sum() - own) / (len(kind) - 1)
        assert label.ratio == pytest.approx(float(own / others), rel=1e-4)
        for c in kind:  # no concept of any kind is more specific
            rest = (means[kind, feature].sum() - means[c, feature]) / (len(kind) - 1)
            assert rest == 0 or float(means[c, feature] / rest) <= label.ratio * (1 + 1e-4)
        assert label.text.startswith(f"{label.concept} x") and f"vs other {label.kind}s" in label.text
        checked += 1
    assert checked > 0


def test_search_finds_features_by_label_and_by_id(ex, point):
    found = ex.features.search(point, "dots")
    assert found and all("dots" in r.label for r in found)
    ratios = [ex.features.labels(point)[r.feature].ratio for r in found]
    assert ratios == sorted(ratios, reverse=True)
    assert [r.feature for r in ex.features.search(point, " 7 ")] == [7]
    with pytest.raises(SaeuronError, match="enter a concept"):
        ex.features.search(point, "  ")
    assert ex.features.search(point, "no-such-concept") == []


def test_the_card_html_shows_raw_and_overlay_with_the_box_and_a_colour_bar(ex, point):
    from explorer.cardview import examples_html

    feature = ex.features.rank(point, "dots", limit=1)[0].feature
    card = ex.features.card(point, feature, None, "dots")
    page = examples_html(card.patches)
    assert page.count('class="example"') == len(card.patches) > 0
    assert page.count('class="raw"') == page.count('class="heat"') == len(card.patches)
    assert page.count('class="peak-box"') == 2 * len(card.patches)  # on the raw image and on the overlay
    assert "colour-bar" in page and card.patches[0].prompt in page
    first = card.patches[0]
    assert f"step {first.step} (timestep {first.timestep})" in page
    left, top, right, bottom = first.box
    size = first.raw.shape[0] / first.heatmap.shape[0]
    assert (left, top) == (round(first.col * size), round(first.row * size)) and right - left == round(size)


def test_card_plots_data(ex, point):
    stats = ex.session.bundle.stats[point]
    card = ex.features.card(point, 5, None, "star")
    means = stats.concept_sums[:, :, 5] / stats.concept_counts[:, None]
    assert card.activation_by_step["star"] == pytest.approx(means[stats.concepts.index("star")].tolist())
    assert card.activation_by_step["all concepts"] == pytest.approx(means.mean(0).tolist())
    assert card.histogram_counts == stats.histogram[5].tolist()
    assert card.concept_means["star"] == pytest.approx(float(means[stats.concepts.index("star")].mean()))


def test_lru_cache_is_bounded():
    cache = LruCache(2)
    cache.put("a", 1), cache.put("b", 2), cache.get("a"), cache.put("c", 3)
    assert len(cache) == 2 and cache.get("b") is None and cache.get("a") == 1


@pytest.mark.slow
def test_feature_map_is_computed_once_and_cached_on_disk(ex, point):
    fmap = ex.features.feature_map(point)
    n = ex.session.bundle.saes[point].num_latents
    assert fmap.xy.shape == (n, 2) and np.isfinite(fmap.xy).all() and len(fmap.top_concept) == n
    again = Explorer.build(ex.session, ex.features.map_cache_dir).features.feature_map(point)
    assert np.array_equal(again.xy, fmap.xy)
    assert len(list(ex.features.map_cache_dir.glob("umap-*.npy"))) == 1


# --------------------------------------------------------------------------- generation
def test_generate_before_after_and_difference(ex, point):
    plain = ex.editor.generate(recipe(ex))
    assert np.array_equal(plain.before, plain.after) and plain.max_difference == 0
    feature = ex.features.rank(point, "dots", limit=1)[0].feature
    edited = ex.editor.generate(
        recipe(
            ex,
            ScaleFeatures((feature,), 0.0, None, point),
            Steer((1, 2), 25.0, (0, 5), StepWindow(0, 2), ex.session.points[1]),
        )
    )
    assert np.array_equal(edited.before, plain.before)
    assert not np.array_equal(edited.before, edited.after) and edited.max_difference > 0
    assert edited.difference.shape == edited.after.shape


def test_concurrent_requests_get_their_own_interventions(ex, point):
    recipes = [recipe(ex, ScaleFeatures((f,), 0.0 if f % 2 else 3.0, None, point)) for f in range(6)]
    sequential = [ex.session.render(r) for r in recipes]
    results = [None] * len(recipes)

    def run(i):
        results[i] = ex.session.render(recipes[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(recipes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(a, b) for a, b in zip(results, sequential))
    assert len({r.tobytes() for r in sequential}) > 1


def test_features_at_a_patch_are_the_saes_top_k_of_that_token(ex, point):
    r = recipe(ex, ScaleFeatures((3,), 0.0, None, point))
    found = ex.editor.features_at(r, point, 1, x=12, y=3, image_size=(16, 16))
    session = ex.session
    from saeuron_core.interventions import apply_interventions

    with (
        torch.inference_mode(),
        apply_interventions(session.pipe.unet, session.bundle.saes, list(r.interventions)),
        capture_activations(session.pipe.unet, point, halves="cond") as rec,
    ):
        generate(session.pipe, r.prompt, [r.seed], r.steps, r.guidance, output_type="latent")
        maps = rec.stacked(point)[1]
        _, _, height, width = maps.shape
        token = to_tokens(maps)[0, (3 * height // 16) * width + 12 * width // 16]
        acts, ids = session.bundle.saes[point].encode(token)
    expected = sorted(((float(a), int(i)) for a, i in zip(acts, ids) if a > 0), reverse=True)
    assert [f.feature for f in found] == [i for _, i in expected]
    assert [f.activation for f in found] == pytest.approx([a for a, _ in expected])


def test_where_a_feature_fires_in_my_image_at_each_step(ex, point):
    r = ex.session.complete(recipe(ex, ScaleFeatures((3,), 0.0, None, point), steps=3))
    auto = ex.editor.feature_in_image(r, point)  # no feature given: the image's most active one
    assert not auto.chosen and auto.maps.shape[0] == 3 and auto.maps.max() > 0
    assert np.array_equal(auto.image, ex.session.render(r)) and len(auto.timesteps) == 3
    with ex.session.unet():
        with apply_interventions(ex.session.pipe.unet, ex.session.bundle.saes, list(r.interventions)):
            with capture_activations(ex.session.pipe.unet, point, halves="cond", cfg=r.guidance > 1) as rec:
                generate(ex.session.pipe, r.prompt, [r.seed], r.steps, r.guidance, output_type="latent")
    tokens = to_tokens(rec.stacked(point)[:, 0])  # [T, HW, C]
    acts, ids = ex.session.bundle.saes[point].encode(tokens)
    assert auto.feature == int(ids.flatten()[acts.flatten().argmax()])
    chosen = ex.editor.feature_in_image(r, point, 3)  # the ablated feature: zero everywhere after the edit
    assert chosen.chosen and chosen.feature == 3 and chosen.maps.max() == 0
    other = int(ids[1, 0, 0])
    found = ex.editor.feature_in_image(r, point, other)
    expected = (acts * (ids == other)).sum(-1).reshape(found.maps.shape)
    assert np.allclose(found.maps, expected.detach().numpy())
    with pytest.raises(SaeuronError, match="feature id must be in"):
        ex.editor.feature_in_image(r, point, 10**6)


def test_several_seeds_give_each_seeds_before_and_after(ex, point):
    r = recipe(ex, ScaleFeatures((3,), 0.0, None, point), steps=2)
    results = ex.editor.seeds(r, [4, 5, 4])
    assert [x.recipe.seed for x in results] == [4, 5]
    for x in results:
        single = ex.editor.generate(replace(r, seed=x.recipe.seed))
        assert np.array_equal(x.before, single.before) and np.array_equal(x.after, single.after)
    with pytest.raises(SaeuronError, match="the limit is"):
        ex.editor.seeds(r, list(range(ex.session.limits.max_seeds + 1)))


# --------------------------------------------------------------------------- recipes
def test_recipe_json_query_and_snippet_reproduce_the_image(ex, point, tmp_path, monkeypatch):
    r = ex.session.complete(
        recipe(
            ex,
            ScaleFeatures((7,), 0.0, StepWindow(1, None), point),
            Unlearn(("dots",), 90.0, -10.0, point=ex.session.points[1]),
            seed=5,
        )
    )
    image = ex.session.render(r)
    assert recipe_from_json(recipe_to_json(r)) == r
    assert recipe_from_query(recipe_to_query(r), r.model, r.sae, r.stats) == r
    assert recipe_from_query("") is None
    monkeypatch.chdir(tmp_path)
    exec(recipe_to_python(r, ex.session.sources.defaults), {})
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "recipe.png").convert("RGB")), image)


def test_a_recipe_keeps_the_unlearn_score_and_the_papers_stays_implicit(ex, point):
    specific = ex.session.complete(
        recipe(ex, Unlearn(("dots",), 90.0, -10.0, point=ex.session.points[1], score="specific"))
    )
    assert recipe_from_json(recipe_to_json(specific)) == specific and '"score": "specific"' in recipe_to_json(specific)
    paper = ex.session.complete(recipe(ex, Unlearn(("dots",), 90.0, -10.0, point=ex.session.points[1])))
    assert '"score"' not in recipe_to_json(paper)  # recipes written before the variant read the same
    assert (
        ex.session.render(specific).shape == ex.session.render(paper).shape
    )  # the variant renders through the same path


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[]", "a recipe is a JSON object"),
        ('{"format": "other"}', "not a recipe of format"),
        ('{"format": "saeuron-recipe/1", "prompt": "x", "seed": 0, "steps": 3}', r"missing fields \['guidance'\]"),
        (
            '{"format": "saeuron-recipe/1", "prompt": "x", "seed": 0, "steps": 3, "guidance": 1,'
            ' "interventions": [{"type": "Ablate"}]}',
            "type one of",
        ),
        (
            '{"format": "saeuron-recipe/1", "prompt": "x", "seed": 0, "steps": 3, "guidance": 1,'
            ' "interventions": [{"type": "Steer", "point": "p", "features": [1]}]}',
            r"missing fields \['strength'\]",
        ),
        (
            '{"format": "saeuron-recipe/1", "prompt": "x", "seed": 0, "steps": 3, "guidance": 1,'
            ' "interventions": [{"type": "ScaleFeatures", "point": "p", "features": [1], "factor": 0,'
            ' "steps": [3, 1]}]}',
            "step window needs",
        ),
    ],
)
def test_malformed_recipes_are_refused(text, message):
    with pytest.raises(SaeuronError, match=message):
        recipe_from_json(text)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda ex, p: recipe(ex, prompt="  "), "prompt is empty"),
        (lambda ex, p: recipe(ex, prompt="x" * 301), "the limit is 300"),
        (lambda ex, p: recipe(ex, steps=51), r"steps must be in \[1, 50\]"),
        (lambda ex, p: recipe(ex, seed=-1), "seed must be in"),
        (lambda ex, p: recipe(ex, guidance=1e9), "guidance must be in"),
        (
            lambda ex, p: recipe(ex, *[ScaleFeatures((i,), 0.0, None, p) for i in range(13)]),
            "13 interventions; the limit is 12",
        ),
        (lambda ex, p: recipe(ex, ScaleFeatures((1,), 1e6, None, p)), "scale factor must be in"),
        (lambda ex, p: recipe(ex, Steer((1,), float("nan"), None, None, p)), "steering strength must be a number"),
        (lambda ex, p: recipe(ex, ScaleFeatures((100_000,), 0.0, None, p)), "feature id must be in"),
        (lambda ex, p: recipe(ex, ScaleFeatures((1,), 0.0, None, "up_blocks.7.attentions.0")), "no SAE for hook point"),
        (lambda ex, p: recipe(ex, Unlearn(("vangogh",), 90.0, -1.0, point=p)), "unknown concept 'vangogh'"),
        (lambda ex, p: replace(recipe(ex), model="other/model"), "the recipe is for model"),
    ],
)
def test_inputs_beyond_the_caps_are_refused(ex, point, make, message):
    with pytest.raises(SaeuronError, match=message):
        ex.session.render(make(ex, point))


def test_a_model_without_the_sae_hook_points_is_refused(ex):
    s = ex.session
    bundle = SaeBundle({"up_blocks.9.attentions.0": next(iter(s.bundle.saes.values()))}, {}, {}, {})
    with pytest.raises(SaeuronError, match="hook point 'up_blocks.9.attentions.0' does not exist"):
        ExplorerSession(s.pipe, s.info, bundle, None, s.sources, Limits())


def test_a_deferred_pipeline_is_loaded_on_first_use_and_checked_then(ex, tiny_bundle):
    r = tiny_bundle
    session = ExplorerSession.open(
        str(r / "model"), str(r / "sae"), str(r / "stats"), str(r / "defaults.json"), defer_pipeline=True
    )
    assert not session.pipeline_loaded and session.info == ex.session.info
    assert Explorer.build(session).features.rank(session.points[0], "dots", limit=3)  # the first page needs no pipeline
    assert not session.pipeline_loaded
    plain = replace(session.default_recipe(PROMPT), steps=2)
    assert np.array_equal(session.render(plain), ex.session.render(plain))  # loaded on first use
    assert session.pipeline_loaded
    bundle = SaeBundle({"up_blocks.9.attentions.0": next(iter(session.bundle.saes.values()))}, {}, {}, {})
    late = ExplorerSession(lambda: ex.session.pipe, session.info, bundle, None, session.sources)
    with pytest.raises(SaeuronError, match="hook point 'up_blocks.9.attentions.0' does not exist"):
        late.pipe


def test_a_request_is_checked_once_where_it_enters(ex, point, monkeypatch):
    import explorer.session as session_module

    calls = []
    real = session_module.check_recipe
    monkeypatch.setattr(session_module, "check_recipe", lambda *a: calls.append(1) or real(*a))
    r = ex.session.recipe(PROMPT, 3, 2, 4.0, [ScaleFeatures((3,), 0.0, None, point)])
    assert calls == [1]
    result = ex.editor.generate(r)  # before and after, rendered: nothing is checked again
    list(ex.editor.stream(r, previews=2))
    assert calls == [1] and result.recipe is r
    assert r == replace(r.unchecked()) and r.with_interventions(()) == replace(r.unchecked(), interventions=())
    with pytest.raises(SaeuronError, match="steps must be an integer"):
        ex.session.recipe(PROMPT, 0, 2.5, 4.0)


def test_previews_come_through_the_librarys_step_callback(ex, point):
    from saeuron_core.pipeline import generate as library_generate

    seen = []

    def callback(_pipe, index, _timestep, tensors):
        seen.append((index, tuple(tensors["latents"].shape)))
        return tensors

    with_callback = library_generate(ex.session.pipe, PROMPT, [1], 3, 4.0, callback_on_step_end=callback)[0]
    assert [i for i, _ in seen] == [0, 1, 2]
    assert np.array_equal(
        np.asarray(with_callback), np.asarray(library_generate(ex.session.pipe, PROMPT, [1], 3, 4.0)[0])
    )


# --------------------------------------------------------------------------- unlearn grid
def test_unlearn_grid_judges_before_and_after(ex):
    grid = ex.audit.run(["dots", "star"], seed=3)
    assert {iv.point for iv in grid.interventions} == set(ex.session.points)
    roles = [c.role for c in grid.cells]
    assert (
        len({c.prompt for c in grid.cells}) <= ex.session.limits.max_grid_prompts
        and "target" in roles
        and "retained" in roles
    )
    assert len(roles) == len(grid.seeds) * len({c.prompt for c in grid.cells})
    for c in grid.cells:
        assert ("dots" in (c.object_name, c.style) or "star" in (c.object_name, c.style)) == (c.role == "target")
    assert set(grid.metrics_after) == {"dots", "star"}
    assert all(0 <= v <= 1 for m in grid.metrics_after.values() for v in m.values() if v == v)
    verdict = ex.session.judge.classify(np.stack([grid.cells[0].after]))
    assert grid.cells[0].after_verdict == (verdict["object"][0], verdict["style"][0])


@pytest.mark.slow
def test_unlearn_compare_runs_methods_side_by_side_on_shared_befores(ex):
    weights = {k: v.clone() for k, v in ex.session.pipe.unet.state_dict().items()}
    heard = []
    grids = ex.audit.compare(["dots"], ["saeuron", "uce", "esd"], seed=2, progress=lambda f, text: heard.append(text))
    assert [g.method for g in grids] == ["saeuron", "uce", "esd"]
    assert any("ESD fine-tuning" in h for h in heard)
    # honest from the first second: a named stage before anything is generated, and ESD's set-up
    # (its training pool comes before the first fine-tuning step) announced before it starts
    assert heard[0].startswith("before: image 1/")
    first_esd = next(i for i, h in enumerate(heard) if h.startswith("ESD"))
    assert heard[first_esd].startswith("ESD: preparing the edit") and "ESD fine-tuning" in heard[first_esd + 1]
    first = grids[0]
    for g in grids[1:]:
        assert [c.prompt for c in g.cells] == [c.prompt for c in first.cells]
        assert all(np.array_equal(a.before, b.before) for a, b in zip(g.cells, first.cells))
        assert g.interventions == () and set(g.metrics_after) == {"dots"}
    assert not all(np.array_equal(a.after, b.after) for a, b in zip(grids[1].cells, first.cells))
    assert all(torch.equal(weights[k], v) for k, v in ex.session.pipe.unet.state_dict().items())  # no edit left behind
    assert ex.audit.run(["dots"], seed=2, method="uce").cells[0].after.tobytes() == grids[1].cells[0].after.tobytes()


def test_esd_training_can_be_switched_off_for_public_servers(ex):
    s = ex.session
    locked = ExplorerSession(s.pipe, s.info, s.bundle, s.judge, s.sources, Limits(train_esd=False))
    with pytest.raises(SaeuronError, match="not precomputed on this server"):
        locked.removal("esd", ["rings"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(concepts=["dots"], method="salun"), "unknown method 'salun'"),
        (dict(concepts=["dots"], method="uce", tau=90.0, gamma=-2.0), "tau and gamma are SAeUron's settings"),
        (dict(concepts=[]), "choose at least one concept"),
        (dict(concepts=["vangogh"]), "unknown concept 'vangogh'"),
        (dict(concepts=["dots"], tau=90.0), "give both tau and gamma"),
        (dict(concepts=["heart"]), "no default tau/gamma for 'heart'"),
        (dict(concepts=["dots"], tau=90.0, gamma=-1e6), "gamma must be in"),
    ],
)
def test_unlearn_grid_bad_input(ex, kwargs, message):
    with pytest.raises(SaeuronError, match=message):
        ex.audit.run(**kwargs)


def test_streamed_generation_previews_steps_and_ends_with_the_rendered_image(ex, point):
    r = recipe(ex, ScaleFeatures((9,), 0.0, None, point), steps=5)
    updates = list(ex.editor.stream(r, previews=2))
    previews, final = updates[:-1], updates[-1]
    assert [p.step for p in previews] == [1, 3]
    assert all(p.image.shape == final.after.shape for p in previews)
    assert np.array_equal(final.after, ex.session.render(r))
    assert np.array_equal(final.before, ex.session.render(r.with_interventions(())))


def test_a_failing_stream_raises_and_leaves_the_unet_free(ex, point):
    with pytest.raises(SaeuronError, match="feature id must be in"):
        list(ex.editor.stream(recipe(ex, ScaleFeatures((10**6,), 0.0, None, point))))
    stream = ex.editor.stream(recipe(ex, ScaleFeatures((9,), 0.0, None, point), steps=4), previews=4)
    next(stream)
    stream.close()  # the consumer leaves early; the generation still finishes and unlocks
    assert np.array_equal(ex.session.render(recipe(ex)), ex.editor.generate(recipe(ex)).after)


def test_a_painted_mask_selects_the_tokens_it_touches():
    from explorer.imaging import tokens_from_mask

    mask = np.zeros((256, 256), dtype=np.uint8)
    mask[0:10, 0:10] = 255  # top-left cell
    mask[200:210, 250:256] = 255  # row 6, last column of an 8x8 grid
    assert tokens_from_mask(mask, (8, 8)) == (0, 6 * 8 + 7)
    assert tokens_from_mask(np.zeros((64, 32)), (4, 2)) == ()


def test_a_card_without_image_generation_uses_only_cached_images(ex, point):
    feature = ex.features.rank(point, "rings", step=2, limit=1)[0].feature
    ex.session.images = LruCache(64)  # nothing cached
    quick = ex.features.card(point, feature, 2, generate_images=False)
    assert quick.patches and all(p.placeholder for p in quick.patches) and len(ex.session.images) == 0
    full = ex.features.card(point, feature, 2)
    assert not any(p.placeholder for p in full.patches) and len(ex.session.images) > 0
    again = ex.features.card(point, feature, 2, generate_images=False)
    assert not any(p.placeholder for p in again.patches)
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(again.patches, full.patches))


# --------------------------------------------------------------------------- formatting and fields
def test_numbers_are_shown_with_three_significant_digits_and_rates_as_percentages():
    from explorer.formatting import percent, sig3

    assert [sig3(v) for v in (0.028053712, 12345.678, 3, 2.0, None)] == ["0.0281", "1.23e+04", "3", "2", ""]
    assert [percent(v) for v in (0.0503, 1.0, 0.375, 0.0)] == ["5.03%", "100%", "37.5%", "0%"]


@pytest.mark.parametrize(
    "value, expected", [(None, None), ("", None), ("  ", None), ("3", 3.0), (" -2.5 ", -2.5), (7, 7.0)]
)
def test_empty_optional_numbers_are_none(value, expected):
    from explorer.formatting import optional_number

    assert optional_number("tau", value) == expected


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: __import__("explorer.formatting").formatting.optional_number("tau", "abc"), "tau must be a number"),
        (lambda: __import__("explorer.formatting").formatting.optional_number("tau", float("nan")), "finite number"),
        (lambda: __import__("explorer.formatting").formatting.optional_int("feature id", "2.5"), "whole number"),
    ],
)
def test_bad_optional_numbers_name_the_field(call, message):
    with pytest.raises(SaeuronError, match=message):
        call()


def test_unlearn_grid_counts_agree_with_its_rates_and_export(ex):
    from explorer.unlearn_results import grid_export, metric_rows, to_csv, verdict_rows

    grid = ex.audit.run(["dots"], seed=3, tau="", gamma="")  # empty fields: the defaults table
    for when in ("before", "after"):
        counts, rates = getattr(grid, f"counts_{when}")["dots"], getattr(grid, f"metrics_{when}")["dots"]
        for metric, (k, n) in counts.items():
            assert n > 0 and k / n == pytest.approx(rates[metric])
    assert counts["CRA"][1] == len(grid.cells) and counts["UA"][1] == sum(c.role == "target" for c in grid.cells)
    assert counts["kept_on_target"][1] == counts["UA"][1]  # dots: a style, every target image names an object
    rows = metric_rows([grid])
    assert {(r["column"], r["metric"]) for r in rows} == {
        (c, m) for c in ("before", "saeuron") for m in ("UA", "IRA", "CRA", "kept_on_target")
    }
    assert all(r["low95"] <= (r["rate"] or 0) <= r["high95"] for r in rows)
    assert len(verdict_rows([grid])) == 2 * len(grid.cells)
    assert to_csv(rows).splitlines()[0] == "concept,metric,column,successes,images,rate,low95,high95,setup_s"
    exported = grid_export([grid])
    assert exported["methods"] == ["saeuron"] and exported["seeds"] == [3, 4]
    # interventions as structured data that round-trips, not a Python repr string
    from explorer.recipes import intervention_from_dict

    assert exported["interventions"] and all(isinstance(d, dict) for d in exported["interventions"])
    assert tuple(intervention_from_dict(d) for d in exported["interventions"]) == grid.interventions
    json.dumps(exported)


def test_unlearn_grid_kept_on_target_counts_the_other_concept_on_target_images(ex):
    """kept_on_target: on the removed concept's own images, the judge still sees the prompt's
    other concept; hand-made cells with known verdicts."""
    from explorer.unlearn_grid import UnlearnAudit
    from explorer.unlearn_results import GridCell

    blank = np.zeros((2, 2, 3), np.uint8)
    cells = [
        GridCell(
            "star", "dots", "target", blank, blank, ("star", "dots"), ("star", "solid"), 1
        ),  # dots gone, star kept
        GridCell(
            "heart", "dots", "target", blank, blank, ("heart", "dots"), ("cross", "solid"), 1
        ),  # dots gone, heart lost
        GridCell(
            "circle", "dots", "target", blank, blank, ("circle", "dots"), ("circle", "dots"), 1
        ),  # not removed, kept
        GridCell("star", "rings", "retained", blank, blank, ("star", "rings"), ("star", "rings"), 1),
    ]
    counts = UnlearnAudit._counts(cells, ["dots"], "after")["dots"]
    assert (
        counts["UA"] == (2, 3)
        and counts["kept_on_target"] == (2, 3)
        and counts["IRA"] == (1, 1)
        and counts["CRA"] == (3, 4)
    )


def test_unlearn_grid_generates_every_prompt_at_every_seed_and_reports_progress_first(ex):
    heard = []
    grid = ex.audit.run(["dots"], seed=5, seeds=2, progress=lambda f, text: heard.append((f, text)))
    by_prompt = {}
    for c in grid.cells:
        by_prompt.setdefault(c.prompt, []).append(c.seed)
    assert all(seeds == [5, 6] for seeds in by_prompt.values()) and grid.seeds == (5, 6)
    targets = sum(c.role == "target" for c in grid.cells)
    assert (
        grid.counts_after["dots"]["UA"][1] == targets == 2 * len({c.prompt for c in grid.cells if c.role == "target"})
    )
    assert all(0 < conf <= 1 for c in grid.cells for conf in (*c.before_confidence, *c.after_confidence))
    assert heard[0][0] == 0.0 and heard[0][1].startswith("before")  # the first report comes before any image
    fractions = [f for f, _ in heard]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    with pytest.raises(SaeuronError, match="seeds must be in"):
        ex.audit.run(["dots"], seeds=0)
    with pytest.raises(SaeuronError, match="seeds must be in"):
        ex.audit.run(["dots"], seeds=99)


def test_steering_unit_is_the_features_typical_top_activation(ex, point):
    stats = ex.session.bundle.stats[point]
    feature = ex.features.rank(point, "dots", limit=1)[0].feature
    stored = stats.example_value[feature]
    assert ex.features.typical_top_activation(point, feature) == pytest.approx(float(stored[stored > 0].median()))


def test_a_concept_selects_its_kinds_hook_point(ex):
    bundle = ex.session.bundle
    for concept in ("dots", "star"):
        assert ex.features.point_of(concept) == bundle.point_of_kind[bundle.kind_of(concept)]


def test_the_map_is_computed_in_the_background_without_blocking_ranking(ex, point, tmp_path):
    fresh = Explorer.build(ex.session, tmp_path).features
    assert fresh._map_thread is None  # an app built without warm-up
    assert fresh.ready_map(point) is None  # not computed yet: the view says so instead of waiting
    assert fresh._map_thread is not None  # ... and asking started it ("computing" is never forever)
    thread = fresh.start_maps()
    fresh.rank(point, "dots")  # ranking does not wait for the map
    thread.join(300)
    assert fresh.ready_map(point) is not None


def test_unknown_words_are_found_only_for_a_closed_vocabulary(ex):
    from explorer.editing import unknown_words

    tokenizer = ex.session.pipe.tokenizer
    assert unknown_words(tokenizer, "An image of star in dots style.") == []
    assert unknown_words(tokenizer, "An image of a zebra in dots style.") == ["zebra"]


def test_the_intervention_table_keeps_rows_that_are_off_and_checks_edits(point):
    import json

    from explorer import intervention_table as table

    ablate = json.dumps([{"type": "ScaleFeatures", "point": point, "features": [3], "factor": 0.0}])
    rows = table.synced_rows(ablate, [])
    assert [r[:7] for r in rows] == [[True, "ablate", point, "3", "0", "0", ""]]
    rows[0][0] = False  # switched off: the JSON drops it, the table keeps it
    rows, text = table.edited(rows)
    assert json.loads(text) == [] and len(rows) == 1 and table.synced_rows(text, rows) is None
    grown = json.dumps([{"type": "Steer", "point": point, "features": [1], "strength": 2.5}])
    rows = table.synced_rows(grown, rows)  # an added intervention is appended after the one that is off
    assert [r[0] for r in rows] == [False, True] and rows[1][1] == "steer"
    rows[1][4], rows[1][6] = "5", "2"
    rows, text = table.edited(rows)
    assert json.loads(text)[0]["strength"] == 5.0 and json.loads(text)[0]["steps"] == [0, 2]
    rows, text = table.without(rows, 1)
    assert len(rows) == 1 and json.loads(text) == []
    bad = [list(rows[0])]
    bad[0][3] = "x"
    with pytest.raises(SaeuronError, match="row 1: features must be whole numbers"):
        table.edited(bad)
    with pytest.raises(SaeuronError, match="select a row"):
        table.without(rows, None)


# --------------------------------------------------------------------------- concept map
CONCEPT_MAP = {
    "blocks": ["down_blocks.1.attentions.0", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1"],
    "kinds": ["object", "style"],
    "values": [[0.1, 0.0], [0.9, 0.2], [0.3, None]],
    "metric": "judged flip rate when only this block sees the swapped word",
}


def test_a_concept_map_is_found_beside_the_model_or_where_saeuron_json_says(tmp_path):
    import json

    from explorer.concept_map import find_concept_map, load_concept_map

    assert find_concept_map(tmp_path) is None and find_concept_map(None) is None  # none: the tab is hidden
    (tmp_path / "concept_map.json").write_text(json.dumps(CONCEPT_MAP))
    found = find_concept_map(tmp_path)
    assert (
        found.blocks == tuple(CONCEPT_MAP["blocks"])
        and found.kinds == ("object", "style")
        and found.metric.startswith("judged")
    )
    assert found.values[1] == (0.9, 0.2) and found.values[2][1] != found.values[2][1]  # null is NaN
    assert (
        found.strongest_block("object") == "up_blocks.1.attentions.0"
        and found.strongest_block("style") == "up_blocks.1.attentions.0"
    )
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "locate.json").write_text(json.dumps({**CONCEPT_MAP, "metric": "named"}))
    (tmp_path / "saeuron.json").write_text(json.dumps({"concept_map": "runs/locate.json"}))
    assert find_concept_map(tmp_path).metric == "named"
    assert load_concept_map(tmp_path / "concept_map.json").blocks == found.blocks


@pytest.mark.parametrize(
    "data, message",
    [
        ("{", "not valid JSON"),
        ({"blocks": ["a"], "kinds": ["object"]}, "needs"),
        ({"blocks": [], "kinds": ["object"], "values": []}, "non-empty list of block names"),
        ({"blocks": ["a", "b"], "kinds": ["object"], "values": [[1.0]]}, "one row per block"),
        ({"blocks": ["a"], "kinds": ["object"], "values": [["x"]]}, "must be numbers"),
    ],
)
def test_a_bad_concept_map_is_refused_with_what_is_wrong(tmp_path, data, message):
    import json

    from explorer.concept_map import load_concept_map

    path = tmp_path / "map.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(SaeuronError, match=message):
        load_concept_map(path)
    with pytest.raises(SaeuronError, match="cannot read"):
        load_concept_map(tmp_path / "missing.json")


# --------------------------------------------------------------------------- a run without a judge
@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory):
    """A run folder from `saeuron prepare` on a save_pretrained SD-architecture folder: no judge,
    no bundled metadata; concepts (animal, painter) come from the statistics."""
    from conftest import make_sd_architecture_pipeline
    from test_prepare import CONCEPTS

    from saeuron_core.cli import main

    root = tmp_path_factory.mktemp("judge_free")
    make_sd_architecture_pipeline(latent_size=32).save_pretrained(root / "model")
    (root / "concepts.csv").write_text(CONCEPTS)
    assert (
        main(
            [
                "--threads",
                "1",
                "prepare",
                "--model",
                str(root / "model"),
                "--concepts",
                str(root / "concepts.csv"),
                "--steps",
                "2",
                "--device",
                "cpu",
                "--kind-point",
                "painter=up_blocks.1.attentions.2",
                "--out",
                str(root / "run"),
            ]
        )
        == 0
    )
    return root


@pytest.mark.slow
def test_unlearn_without_a_judge_measures_image_and_feature_change(prepared_run):
    from explorer.app import open_session, parse_args
    from explorer.panels.unlearn import change_frame, change_html, defaults_text
    from explorer.unlearn_change import ChangeGrid, paper_params
    from explorer.unlearn_results import change_export

    session = open_session(parse_args(["--run", str(prepared_run / "run"), "--device", "cpu", "--threads", "1"]))
    audit = Explorer.build(session, prepared_run / "maps").audit
    assert session.judge is None and not audit.judged
    assert audit.concepts() == ["circle", "heart", "star", "dots", "solid"]  # the statistics' concepts, by kind
    assert "saeuron" in audit.methods()
    concept = audit.best_default_concept()
    assert concept in audit.concepts()
    # no table in this run: the paper's settings, and the panel says so
    tau, gamma, source = audit.defaults_with_source("dots")
    assert (tau, gamma) == paper_params("dots")[0] == (99.999, -1.0) and "paper preset" in source
    assert "paper preset" in defaults_text(Explorer.build(session, prepared_run / "maps"), ["dots"])

    # the panel's untouched defaults: the first concept, SAeUron only, empty tau / gamma, seed 0
    grid = audit.compare([concept], ["saeuron"], 0, "", "")
    assert isinstance(grid, ChangeGrid) and grid.methods == ("saeuron",)
    items = session.bundle.stats[grid.points[0]].items
    own = {it["prompt"] for it in items if concept in it["labels"].values()}
    roles = [c.role for c in grid.cells]
    assert roles == sorted(roles, key=lambda r: r != "target") and "retained" in roles  # target rows first
    assert {c.prompt for c in grid.cells if c.role == "target"} <= own and not {
        c.prompt for c in grid.cells if c.role == "retained"
    } & own
    assert len(grid.cells) <= session.limits.max_grid_prompts
    for cell in grid.cells:
        assert cell.before.shape == cell.after["saeuron"].shape == (64, 64, 3)
        manual = np.abs(cell.after["saeuron"].astype(float) - cell.before.astype(float)).mean()
        assert cell.pixel_change("saeuron") == pytest.approx(manual)
    # the before image is the plain generation, bit for bit
    first = grid.cells[0]
    assert np.array_equal(
        first.before,
        session.plain_images([(first.prompt, 0)], session.info.default_steps, session.info.default_guidance)[0],
    )
    # SAeUron multiplies the selected features by a negative factor where they fire: on the
    # concept's own prompts their activation must go down
    target = [c for c in grid.cells if c.role == "target"]
    assert sum(c.feature_before for c in target) > 0
    assert sum(c.feature_after["saeuron"] for c in target) < sum(c.feature_before for c in target)
    assert any(c.pixel_change("saeuron") > 0 for c in target)
    text = change_html(grid)
    assert "No judge" in text and text.count("<img") == 2 * len(grid.cells) and "pixels Δ" in text
    frame = change_frame(grid)
    assert list(frame["method"]) == ["saeuron", "saeuron"]
    assert change_export(grid)["judge"] is None
    # bad input: one clear error before any generation
    with pytest.raises(SaeuronError, match="unknown concept"):
        audit.compare(["nope"], ["saeuron"])
    with pytest.raises(SaeuronError, match="both tau and gamma"):
        audit.compare([concept], ["saeuron"], 0, 99.0, "")


def _locate_result(judged: bool) -> dict:
    """A small result in the layout `saeuron locate` writes (saeuron_core.locate.locate)."""

    def cell(shows_right, change_wrong):
        return {
            "right_here": {"image_change": 0.5, "shows": shows_right if judged else None},
            "wrong_here": {"image_change": change_wrong, "output_change": 0.2, "shows": 0.5 if judged else None},
        }

    per_block = {
        "object": {"down_blocks.1.attentions.0": cell(0.1, 0.2), "mid_block.attentions.0": cell(0.9, 0.8)},
        "style": {"down_blocks.1.attentions.0": cell(0.6, 0.7), "mid_block.attentions.0": cell(0.0, 0.1)},
    }
    return {
        "blocks": ["down_blocks.1.attentions.0", "mid_block.attentions.0"],
        "conditions": ["wrong_here", "right_here"],
        "judged": judged,
        "model": "tiny",
        "kinds": {
            k: {"cases": 4, "right": {"shows": None}, "wrong": {"shows": None, "image_change": 1.0}, "per_block": v}
            for k, v in per_block.items()
        },
        "cases": [],
        "seconds": 1.0,
    }


@pytest.mark.parametrize("judged", [True, False])
def test_a_locate_result_is_read_as_a_concept_map(tmp_path, judged):
    import json

    from explorer.concept_map import find_concept_map, load_concept_map

    (tmp_path / "locate.json").write_text(json.dumps(_locate_result(judged)))
    cmap = load_concept_map(tmp_path / "locate.json")
    assert cmap.blocks == ("down_blocks.1.attentions.0", "mid_block.attentions.0") and cmap.kinds == ("object", "style")
    # judged: "right word only here" shows the concept; else "swapped word only here" image change
    assert cmap.values == (((0.1, 0.6), (0.9, 0.0)) if judged else ((0.2, 0.7), (0.8, 0.1)))
    assert (
        cmap.strongest_block("object") == "mid_block.attentions.0"
        and cmap.strongest_block("style") == "down_blocks.1.attentions.0"
    )
    assert "saeuron locate" in cmap.metric and ("judged" in cmap.metric) == judged
    assert (
        find_concept_map(None, tmp_path / "locate.json").values == cmap.values
    )  # --concept-map results/locate/locate.json
    broken = _locate_result(judged)
    del broken["kinds"]["style"]["per_block"]["mid_block.attentions.0"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(SaeuronError, match="no .* for 'style' at mid_block.attentions.0"):
        load_concept_map(tmp_path / "broken.json")


def test_the_bundled_model_ships_its_measured_concept_map():
    from explorer.concept_map import find_concept_map
    from saeuron_core.pipeline import resolve_spec

    cmap = find_concept_map(resolve_spec("minicanvas"))
    assert cmap is not None and "saeuron locate" in cmap.metric and set(cmap.kinds) == {"object", "style"}
    assert all(v == v for row in cmap.values for v in row)  # every cell measured


def test_a_map_region_uses_both_axes_and_ranks_what_is_inside(ex, point):
    fmap = ex.features.feature_map(point)
    xs, ys = fmap.xy[:, 0], fmap.xy[:, 1]
    x_range = (float(np.quantile(xs, 0.2)), float(np.quantile(xs, 0.8)))
    y_range = (float(np.quantile(ys, 0.2)), float(np.quantile(ys, 0.8)))
    expected = {i for i in range(len(xs)) if x_range[0] <= xs[i] <= x_range[1] and y_range[0] <= ys[i] <= y_range[1]}
    band = {i for i in range(len(xs)) if x_range[0] <= xs[i] <= x_range[1]}
    assert expected and expected < band  # the y bounds really cut the x band
    rows = ex.features.in_region(point, x_range, y_range, limit=ex.session.limits.max_ranked_rows)
    assert {r.feature for r in rows} <= expected
    assert len(rows) == min(len(expected), ex.session.limits.max_ranked_rows)
    assert [r.score for r in rows] == sorted((r.score for r in rows), reverse=True)
    # the same order as the full ranking (ties in id order), restricted to the box
    full = [r.feature for r in ex.features._ranked(point, None, None) if r.feature in expected]
    assert [r.feature for r in rows] == full[: len(rows)]
    # open bounds: everything
    assert len(ex.features.in_region(point, limit=ex.session.limits.max_ranked_rows)) == min(
        len(xs), ex.session.limits.max_ranked_rows
    )
    with pytest.raises(SaeuronError, match="lower bound"):
        ex.features.in_region(point, (1.0, 0.0))
    with pytest.raises(SaeuronError, match="no feature"):
        ex.features.in_region(point, (float(xs.max()) + 1, None))


# --------------------------------------------------------------------------- concept handles
def test_concept_handles_follow_the_bundles_default_removal_and_add(ex):
    from explorer import handles
    from saeuron_core.interventions import PROMPT_ADD_MAX, PromptAdd
    from saeuron_core.unlearning import ADD_STRENGTH

    session = ex.session
    assert handles.concept_handle(session, "dots", "remove") == session.bundle.unlearn(["dots"])
    # add is the bundle's add handle: the prompt rewritten for every cross-attention block
    added = handles.concept_handle(session, "dots", "add", 2.0)
    assert added == session.bundle.add_concepts(["dots"], 2.0)
    assert added == [PromptAdd(("dots",), 2.0, point=session.bundle.point_of_kind["style"])]
    assert added[0].blocks == () and added[0].steps is None
    (star,) = handles.concept_handle(session, "star", "add", ADD_STRENGTH)
    assert isinstance(star, PromptAdd) and star.strength == 1.0 and star.point == session.bundle.point_of_kind["object"]
    assert handles.concept_handle(session, "dots", "add", PROMPT_ADD_MAX)[0].strength == PROMPT_ADD_MAX
    with pytest.raises(SaeuronError, match="choose a concept"):
        handles.concept_handle(session, None, "remove")
    for bad in (PROMPT_ADD_MAX + 0.01, 0.0, -1.0, 101.0):  # one check, one message: the PromptAdd's own
        with pytest.raises(SaeuronError, match=r"^strength must be in \(0, 3\], got"):
            handles.concept_handle(session, "dots", "add", bad)
    with pytest.raises(SaeuronError, match="enter a strength for adding dots"):
        handles.concept_handle(session, "dots", "add", None)
    with pytest.raises(SaeuronError, match="unknown concept 'vangogh'"):
        handles.concept_handle(session, "vangogh", "add", 1.0)


def test_a_row_is_checked_when_added_and_the_addition_is_named(ex, point):
    from explorer import handles

    rows, message = handles.checked_addition(ex.session, [], [ScaleFeatures((1,), 0.0, None, point)])
    assert len(rows) == 1 and message.startswith(
        "Added row 1 to the intervention table (Generate tab): ablate feature 1 at"
    )
    rows, message = handles.checked_addition(ex.session, rows, handles.concept_handle(ex.session, "dots", "remove"))
    assert "row 2" in message and "remove dots at" in message
    full = [ScaleFeatures((1,), 0.0, None, point)] * ex.session.limits.max_interventions
    with pytest.raises(SaeuronError, match="interventions; the limit is"):
        handles.checked_addition(ex.session, full, [ScaleFeatures((2,), 0.0, None, point)])
    with pytest.raises(SaeuronError, match="steering strength must be in"):
        handles.checked_addition(ex.session, [], [Steer((1,), 1e6, None, None, point)])


def test_the_table_shows_steering_in_multiples_of_typical_activation(ex, point):
    import json

    from explorer import intervention_table as table

    typical = ex.features.typical_top_activation(point, 3)
    assert typical > 0
    unit = ex.features.typical_top_activation
    text = json.dumps(
        [{"type": "Steer", "point": point, "features": [3], "strength": 4.0 * typical, "mask": None, "steps": None}]
    )
    rows = table.synced_rows(text, [], unit)
    assert rows[0][1] == "steer" and rows[0][4] == "4x"
    rows[0][4] = "10x"  # an edit in the card's unit becomes 10 x typical in the recipe
    _, edited = table.edited(rows, unit)
    assert json.loads(edited)[0]["strength"] == pytest.approx(10.0 * typical)


def test_an_added_concept_round_trips_through_recipes(ex, tmp_path, monkeypatch):
    from explorer import handles
    from explorer.recipes import intervention_to_dict
    from saeuron_core.interventions import PromptAdd

    added = handles.concept_handle(ex.session, "dots", "add", 3.0)
    r = ex.session.complete(recipe(ex, *added, prompt="An image of star."))
    assert [type(iv) for iv in r.interventions] == [PromptAdd]
    assert intervention_to_dict(added[0]) == {
        "type": "PromptAdd",
        "point": ex.session.bundle.point_of_kind["style"],
        "concepts": ["dots"],
        "strength": 3.0,
        "blocks": [],
        "steps": None,
    }
    assert recipe_from_json(recipe_to_json(r)) == r
    assert recipe_from_query(recipe_to_query(r), r.model, r.sae, r.stats) == r
    snippet = recipe_to_python(r, ex.session.sources.defaults)
    assert "PromptAdd(concepts=('dots',), strength=3.0, blocks=(), steps=None" in snippet
    image = ex.session.render(r)
    assert not np.array_equal(image, ex.session.render(r.with_interventions(())))  # the prompt was rewritten
    monkeypatch.chdir(tmp_path)
    exec(snippet, {})  # the snippet reproduces the app's image with saeuron_core alone
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "recipe.png").convert("RGB")), image)


def test_row_effects_say_what_each_row_did(ex, point):
    from explorer import handles

    assert handles.row_effects(ex.session, ex.session.complete(recipe(ex))) == (
        [],
        "No interventions: nothing to compare.",
    )
    never = (
        int(torch.nonzero(ex.session.bundle.stats[point].frequency == 0).flatten()[0])
        if (ex.session.bundle.stats[point].frequency == 0).any()
        else None
    )
    ranked = ex.features.rank(point, "dots")[0].feature
    rows, overall = handles.row_effects(
        ex.session, ex.session.complete(recipe(ex, ScaleFeatures((ranked,), 0.0, None, point)))
    )
    (row,) = rows
    assert row.row == 1 and row.features == 1 and row.intervention.startswith(f"ablate feature {ranked}")
    if row.before > 0:
        assert row.after < row.before and "down" in row.explanation
    else:
        assert row.explanation.startswith("nothing changed: the edited features do not fire")
    assert overall.startswith("Judge: unedited image")
    if never is not None:
        (row,) = handles.row_effects(
            ex.session, ex.session.complete(recipe(ex, ScaleFeatures((never,), 0.0, None, point)))
        )[0]
        assert row.explanation.startswith("nothing changed")


def test_a_list_of_json_strings_is_refused_with_a_message_not_an_internal_error(ex):
    # a gradio_client caller once passed the add endpoint's (JSON, note) pair as the interventions
    with pytest.raises(SaeuronError, match="intervention 1 is a str, not an intervention"):
        ex.session.recipe("An image of star in dots style.", 0, 3, 4.0, ['[{"type": "ScaleFeatures"}]', "added"])


# --------------------------------------------------------------------------- the default removal as a rerouting
REROUTED = {"dots": "solid", "rings": "solid", "solid": "dots"}
"""The tiny bundle's styles with a "reroute" block, as the bundled table gives every MiniCanvas style."""


@pytest.fixture(scope="module")
def rerouting(ex, tiny_bundle, tmp_path_factory) -> Explorer:
    """The tiny session with a defaults table of variant "reroute-styles": "remove" a style is a
    ``Reroute`` (the pipeline, SAEs, statistics and judge are ``ex``'s)."""
    table = json.loads((tiny_bundle / "defaults.json").read_text())
    block = {"blocks": [], "latents_per_step": 3, "detect": 0.3}
    table["variant"] = "reroute-styles"
    table["concepts"] = {
        **table["concepts"],
        **{s: {"tau": 99.0, "gamma": -5.0, "reroute": {**block, "anchor": a}} for s, a in REROUTED.items()},
    }
    path = tmp_path_factory.mktemp("reroute") / "defaults.json"
    path.write_text(json.dumps(table))
    s = ex.session
    bundle = replace(s.bundle, defaults=table, defaults_source=f"table {path}")
    session = ExplorerSession(s.pipe, s.info, bundle, s.judge, replace(s.sources, defaults=str(path)), s.limits)
    return Explorer.build(session, tmp_path_factory.mktemp("maps"))


def test_remove_is_the_tables_rerouting_and_the_editor_says_so(ex, rerouting):
    from explorer import handles
    from explorer import intervention_table as table
    from explorer.selection import measured_as
    from saeuron_core.interventions import PromptAdd, Reroute

    session = rerouting.session
    (removal,) = handles.concept_handle(session, "dots", "remove")
    assert isinstance(removal, Reroute) and removal.per_concept()[0][::2] == ("dots", "solid")
    assert removal.point == session.bundle.point_of_kind["style"] and removal.blocks == ()
    rows, message = handles.checked_addition(session, [], [removal])
    assert rows == [removal] and message.endswith(f"remove dots at {removal.point} (rerouted to solid).")
    (added,) = handles.concept_handle(session, "dots", "add", 2.0)  # rewrites the prompt, whatever remove does
    assert isinstance(added, PromptAdd) and (added.point, added.strength) == (removal.point, 2.0)
    # its row reports the paper's selection (the table's tuned tau), not the rerouting's detection latents
    (paper,) = session.bundle.unlearn(["dots"], paper=True)
    measured = measured_as(session.bundle, added)
    assert (measured.point, measured.tau, measured.score) == (paper.point, paper.tau, paper.score)
    assert measured.tau != removal.tau
    assert handles.default_removals(session) == ("styles", "objects")
    assert handles.default_removals(ex.session) == ("", "objects and styles")
    text = table.what_each_does(*handles.default_removals(session))
    assert "for styles, counterfactual rerouting" in text and "for objects, SAeUron's scaling" in text
    assert "rerouting" not in table.what_each_does(*handles.default_removals(ex.session))
    for text in (text, table.what_each_does(*handles.default_removals(ex.session))):
        assert "**add** rewrites the prompt read by cross-attention" in text
        assert "typical top" not in text.split("**add**")[1]  # add has no feature unit any more
    nearest = Reroute(("dots", "rings"), anchor="nearest", point=removal.point)
    assert handles.describe(nearest) == f"remove dots+rings at {removal.point} (rerouted to the nearest concept)"


def test_a_reroute_row_keeps_its_spec_and_only_its_steps_are_edited(rerouting):
    from explorer import handles
    from explorer import intervention_table as table
    from explorer.recipes import intervention_to_dict

    (removal,) = handles.concept_handle(rerouting.session, "dots", "remove")
    rows = table.synced_rows(json.dumps([intervention_to_dict(removal)]), [])
    assert [r[:8] for r in rows] == [
        [True, "remove", removal.point, "dots", "rerouted to solid, detect 0.3", "0", "", ""]
    ]
    rows[0][4], rows[0][5] = "not a number", "1"  # the value is not edited; the steps are
    rows, text = table.edited(rows)
    (spec,) = json.loads(text)
    assert spec == {**intervention_to_dict(removal), "steps": [1, None]}
    assert rows[0][4] == "rerouted to solid, detect 0.3"


def test_a_reroute_round_trips_through_json_url_and_python(rerouting, tmp_path, monkeypatch):
    from explorer import handles
    from explorer.recipes import intervention_from_dict, intervention_to_dict
    from saeuron_core.interventions import Reroute

    session = rerouting.session
    style = session.bundle.point_of_kind["style"]
    (default,) = handles.concept_handle(session, "dots", "remove")
    custom = Reroute(
        ("rings", "solid"),
        anchor="nearest",
        blocks=(style, "unet.up_blocks.1.attentions.0"),
        tau=(99.0, 98.5),
        detect=0.0,
        match=0.9,
        steps=StepWindow(1, None),
        point=style,
        score="specific",
        heed_prompt=False,
        untrusted="swap",
    )
    for iv in (default, custom):
        assert intervention_from_dict(json.loads(json.dumps(intervention_to_dict(iv)))) == iv
    assert '"score"' not in json.dumps(intervention_to_dict(default)) and default.heed_prompt
    assert intervention_to_dict(custom)["heed_prompt"] is False and "heed_prompt" not in intervention_to_dict(default)
    assert intervention_to_dict(custom)["anchor"] == "nearest" and intervention_to_dict(default)["anchor"] == ["solid"]
    r = session.complete(recipe(rerouting, default, custom, seed=2))
    assert recipe_from_json(recipe_to_json(r)) == r
    assert recipe_from_query(recipe_to_query(r), r.model, r.sae, r.stats) == r
    image = session.render(r)
    monkeypatch.chdir(tmp_path)
    snippet = recipe_to_python(r, session.sources.defaults)
    assert "Reroute(concepts=('dots',), anchor=('solid',), blocks=()" in snippet
    exec(snippet, {})
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "recipe.png").convert("RGB")), image)


def _reroute_dict(style_point: str, **changes) -> dict:
    spec = {"type": "Reroute", "point": style_point, "concepts": ["dots"], "anchor": "solid", "blocks": [], "tau": 99.0}
    return {**spec, "detect": 0.3, "match": 0.8, **changes}


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(anchor="vangogh"), "cannot reroute dots to 'vangogh': not a known style; choose one of"),
        (dict(anchor="star"), "cannot reroute dots to 'star': not a known style"),
        (
            dict(concepts=["dots", "rings"], anchor=["rings", "solid"]),
            "cannot reroute dots to rings: it is removed too",
        ),
        (dict(concepts=["dots", "solid", "rings"], anchor="nearest"), "no style is left to reroute dots to"),
        (dict(concepts=["dots", "star"], anchor="solid"), "a Reroute's concepts must be of one kind"),
        (dict(concepts=["vangogh"]), "unknown concept 'vangogh'"),
        (dict(blocks=["up_blocks.9.attentions.0"]), "'up_blocks.9.attentions.0' is not a cross-attention block"),
        (dict(blocks=["up_blocks.1.resnets.0"]), "'up_blocks.1.resnets.0' is not a cross-attention block"),
        (dict(blocks=["up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.1"]), "is named twice"),
        (dict(blocks="up_blocks.1.attentions.1"), "blocks must be a list of names"),
        (dict(anchor=7), "anchor must be a list of names"),
        (dict(detect=2.0), "detect is a share of tokens"),
        (dict(point="up_blocks.9.attentions.0"), "no SAE for hook point"),
        (dict(heed_prompt="yes"), "heed_prompt must be true or false"),
        (dict(untrusted="ignore"), "untrusted must be one of swap, anchor"),
    ],
)
def test_a_bad_reroute_gets_one_line_where_it_is_added_and_where_a_recipe_is_checked(
    rerouting, monkeypatch, changes, message
):
    from explorer import handles
    from explorer.recipes import intervention_from_dict

    session = rerouting.session
    spec = _reroute_dict(session.bundle.point_of_kind["style"], **changes)
    monkeypatch.setattr(session, "run", lambda *a, **k: pytest.fail("generated before the check"))
    with pytest.raises(SaeuronError, match=message):
        handles.checked_addition(session, [], [intervention_from_dict(spec)])
    with pytest.raises(SaeuronError, match=message):
        session.render(session.recipe(PROMPT, 0, 3, 4.0, json.dumps([spec])))


def test_a_reroute_rows_effects_say_whether_it_detected_and_what_changed(rerouting):
    from explorer import handles

    session = rerouting.session
    (default,) = handles.concept_handle(session, "dots", "remove")
    stats = session.bundle.concept_stats([default])[default.point]
    for detect in (0.0, default.detect, 1.0):
        iv = replace(default, detect=detect)
        r = session.complete(recipe(rerouting, iv))
        (row,), overall = handles.row_effects(session, r)
        assert row.intervention == f"remove dots at {iv.point} (rerouted to solid)"
        # the flag latents: SAeUron's selection of dots, per statistics row (all the steps' rows here)
        rows_used = {stats.row_for_timestep(float(t)) for t in session.run(r, capture=[iv.point]).timesteps}
        expected = torch.cat([select(score(stats, "dots"), iv.tau[0])[i] for i in rows_used]).unique()
        assert row.features == len(expected) > 0
        changed = not np.array_equal(session.render(r), session.render(r.with_interventions(())))
        if row.explanation.startswith("nothing rerouted"):  # the library's flag hook never fired
            assert not changed and row.before == row.after and f"detect {detect:.0%}" in row.explanation
        else:
            assert row.explanation.startswith("dots detected at step ") and ": rerouted to solid" in row.explanation
            assert changed or "changed nothing in the image" in row.explanation
        plain = session.render(r.with_interventions(()))
        assert row.judge_before.endswith("sees " + session.judge.classify(plain[None].copy())["style"][0])
        assert "Error" not in row.explanation and overall.startswith("Judge: unedited image")
        if detect == 0.0:  # a share is never below 0: detected at the first step
            assert row.explanation.startswith("dots detected at step 0")
        if detect == 1.0:  # every token of every step flagged is what 1.0 asks: not on this random model
            assert row.explanation.startswith("nothing rerouted: dots not detected")
    both = session.complete(
        recipe(rerouting, replace(default, detect=0.0), ScaleFeatures((1,), 0.0, None, default.point))
    )
    first, _ = handles.row_effects(session, both)[0]
    assert "detected at step 0 in the unedited generation" in first.explanation
    assert isinstance(handles.concept_handle(session, "star", "remove")[0], Unlearn)  # objects: the paper's scaling


def test_a_reroute_row_says_when_the_prompt_asks_for_another_concept_of_the_kind(rerouting):
    """heed_prompt: on a prompt naming rings, a removal of dots detected everywhere (detect 0) is
    left alone, the image is the unedited one, and the row says why; without heeding it reroutes."""
    from explorer import handles

    session = rerouting.session
    (default,) = handles.concept_handle(session, "dots", "remove")
    iv = replace(default, detect=0.0)
    r = session.complete(recipe(rerouting, iv, prompt="An image of star in rings style."))
    (row,), _ = handles.row_effects(session, r)
    assert row.explanation.startswith("nothing rerouted: dots left alone: the prompt names another of its kind")
    assert np.array_equal(session.render(r), session.render(r.with_interventions(())))
    deaf = session.complete(
        recipe(rerouting, replace(iv, heed_prompt=False), prompt="An image of star in rings style.")
    )
    (row,), _ = handles.row_effects(session, deaf)
    assert row.explanation.startswith("dots detected at step 0") and "left alone" not in row.explanation


def test_the_selection_is_unlearns_and_the_meter_measures_a_reroutes_flag_latents(rerouting):
    from explorer import handles
    from explorer.selection import selected_per_row
    from explorer.unlearn_change import FeatureMeter
    from saeuron_core.interventions import UnlearnEdit

    bundle = rerouting.session.bundle
    (reroute,) = handles.concept_handle(rerouting.session, "dots", "remove")
    stats = bundle.concept_stats([reroute])[reroute.point]
    same = Unlearn(reroute.concepts, reroute.tau, -5.0, point=reroute.point)
    library = UnlearnEdit(same, stats, torch.device("cpu")).latents_per_row
    ours = selected_per_row(reroute, stats)
    assert len(ours) == len(library) and all(torch.equal(a, b) for a, b in zip(ours, library))
    meter = FeatureMeter(bundle, [reroute, Unlearn(("rings",), 99.0, -5.0, point=reroute.point)])
    rings = selected_per_row(Unlearn(("rings",), 99.0, -5.0), stats)
    assert meter.points == [reroute.point]  # two removals at one point: the union of their latents
    assert all(
        torch.equal(m, torch.cat([a, b]).unique()) for m, a, b in zip(meter.latents_per_row[reroute.point], ours, rings)
    )


def test_the_unlearn_tab_runs_the_default_rerouting_and_names_its_variant(rerouting):
    from explorer.panels.unlearn import defaults_text, matrix_html
    from explorer.recipes import intervention_from_dict, intervention_to_dict
    from explorer.unlearn_results import change_export, grid_export
    from saeuron_core.interventions import Reroute

    audit, bundle = rerouting.audit, rerouting.session.bundle
    text = defaults_text(rerouting, ["dots", "star"])
    assert "removal variant reroute-styles" in text and "dots: rerouted to solid: once its selected features" in text
    assert "star: tau 98, gamma -10 (SAeUron's scaling)" in text
    grid = audit.run(["dots"], seed=1, seeds=1, tau="", gamma="")  # the panel's empty fields
    assert grid.interventions == tuple(bundle.unlearn(["dots"])) and isinstance(grid.interventions[0], Reroute)
    assert grid.variant == "reroute-styles" and grid.removals()["dots"]["anchor"] == "solid"
    exported = grid_export([grid])
    assert exported["variants"] == {"saeuron": "reroute-styles"}
    assert exported["interventions"] == [intervention_to_dict(iv) for iv in grid.interventions]
    assert tuple(intervention_from_dict(d) for d in json.loads(json.dumps(exported["interventions"]))) == (
        grid.interventions
    )
    assert "<b>saeuron</b> (variant reroute-styles): dots rerouted to solid" in matrix_html([grid])
    given = audit.run(["dots"], seed=1, seeds=1, tau=99.0, gamma=-5.0)  # typed settings: the paper's scaling
    assert isinstance(given.interventions[0], Unlearn) and given.variant == "paper"
    # without a judge the same removal is measured: its flag latents' activation
    change = audit.measure(["dots"], ["saeuron"], seed=1)
    assert change.interventions == grid.interventions and change.params["dots"]["removal"] == "rerouting"
    measured = change_export(change)
    assert measured["interventions"] == exported["interventions"]
    assert measured["params"]["dots"]["source"] == bundle.defaults_source


def test_a_replace_row_gets_a_message_that_names_it(ex):
    """A defaults table's "replace" variant is applied by the library; the explorer refuses its
    rows with a line that says what they are, not that they are not interventions."""
    from explorer.recipe_checks import check_interventions
    from saeuron_core.interventions import Replace

    point = ex.session.bundle.point_of_kind["style"]
    with pytest.raises(SaeuronError, match="is a Replace .* cannot show or edit"):
        check_interventions([Replace(("dots",), tau=99.0, point=point)], ex.session.bundle, Limits(), lambda: ())


# --------------------------------------------------------------------------- the add handle as a PromptAdd
def _prompt_add_dict(style_point: str, **changes) -> dict:
    return {"type": "PromptAdd", "point": style_point, "concepts": ["dots"], "strength": 1.0, **changes}


def test_a_prompt_add_round_trips_with_its_blocks_and_window(ex):
    from explorer.recipes import intervention_from_dict, intervention_to_dict
    from saeuron_core.interventions import PromptAdd

    session = ex.session
    style = session.bundle.point_of_kind["style"]
    blocks = session.cross_attention_blocks()
    mid = next(b for b in blocks if b.startswith("mid_block"))  # the mid block is one of its blocks
    custom = PromptAdd(
        ("dots", "rings"), 0.5, blocks=(mid, f"unet.{blocks[0]}"), steps=StepWindow(1, None), point=style
    )
    assert intervention_from_dict(json.loads(json.dumps(intervention_to_dict(custom)))) == custom
    # a hand-written one may leave out the optional fields
    assert intervention_from_dict(_prompt_add_dict(style)) == PromptAdd(("dots",), 1.0, point=style)
    r = session.complete(recipe(ex, custom, seed=3))
    assert recipe_from_json(recipe_to_json(r)) == r
    assert recipe_from_query(recipe_to_query(r), r.model, r.sae, r.stats) == r
    assert f"blocks=('{mid}', 'unet.{blocks[0]}'), steps=StepWindow(1, None)" in recipe_to_python(r)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(concepts=["vangogh"]), "unknown concept 'vangogh'"),
        (dict(concepts=["dots", "star"]), "PromptAdd at .*: star is a object, whose features are at"),
        (dict(concepts=["dots", "dots"]), "named twice"),
        (dict(concepts=[]), "concepts must be a list of names"),
        (dict(concepts="dots"), "concepts must be a list of names"),
        (dict(strength=3.5), r"strength must be in \(0, 3\], got 3.5"),
        (dict(strength=0.0), r"strength must be in \(0, 3\], got 0"),
        (dict(strength=-2.0), r"strength must be in \(0, 3\], got -2"),
        (dict(strength="strong"), "PromptAdd intervention has a malformed field"),
        (dict(blocks=["up_blocks.9.attentions.0"]), "PromptAdd block 'up_blocks.9.attentions.0' is not a cross-attent"),
        (dict(blocks=["up_blocks.1.resnets.0"]), "'up_blocks.1.resnets.0' is not a cross-attention block"),
        (dict(blocks=["up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.1"]), "is named twice"),
        (dict(blocks="up_blocks.1.attentions.1"), "PromptAdd intervention: blocks must be a list of names"),
        (dict(point="up_blocks.9.attentions.0"), "no SAE for hook point"),
        (dict(tau=99.0), r"PromptAdd intervention: missing fields \[\], unknown fields \['tau'\]"),
    ],
)
def test_a_bad_prompt_add_gets_one_line_where_it_is_added_and_where_a_recipe_is_checked(
    ex, monkeypatch, changes, message
):
    from explorer import handles
    from explorer.recipes import intervention_from_dict

    session = ex.session
    spec = _prompt_add_dict(session.bundle.point_of_kind["style"], **changes)
    monkeypatch.setattr(session, "run", lambda *a, **k: pytest.fail("generated before the check"))
    with pytest.raises(SaeuronError, match=message):
        handles.checked_addition(session, [], [intervention_from_dict(spec)])
    with pytest.raises(SaeuronError, match=message):
        session.render(session.recipe(PROMPT, 0, 3, 4.0, json.dumps([spec])))


def test_a_prompt_add_row_shows_its_strength_and_only_its_value_and_steps_are_edited(ex):
    from explorer import handles
    from explorer import intervention_table as table
    from explorer.recipes import intervention_to_dict

    (added,) = handles.concept_handle(ex.session, "dots", "add", 1.0)
    rows = table.synced_rows(json.dumps([intervention_to_dict(added)]), [])
    assert [r[:8] for r in rows] == [[True, "add", added.point, "dots", "1", "0", "", "prompt rewritten, every block"]]
    rows[0][3], rows[0][4], rows[0][6] = "rings", "2.5", "2"  # the concepts are not edited; strength and steps are
    rows, text = table.edited(rows)
    (spec,) = json.loads(text)
    assert spec == {**intervention_to_dict(added), "strength": 2.5, "steps": [0, 2]}
    assert rows[0][3:5] == ["dots", "2.5"]
    rows[0][4] = "4"
    with pytest.raises(SaeuronError, match=r"strength must be in \(0, 3\], got 4"):
        table.edited(rows)
    _, message = handles.checked_addition(ex.session, [], [added])
    assert message.endswith("add dots: prompt rewritten, strength 1.")
    one_block = replace(added, blocks=("up_blocks.1.attentions.0",))
    assert handles.describe(one_block) == "add dots: prompt rewritten at 1 block, strength 1"
    assert table.row_of(intervention_to_dict(one_block))[7] == "prompt rewritten, up_blocks.1.attentions.0"


def test_a_prompt_add_rows_effects_say_which_prompt_cross_attention_read(ex):
    from explorer import handles
    from explorer.selection import measured_as, selected_per_row
    from saeuron_core.prompt_add import prompt_added
    from saeuron_core.unlearning import ADD_STRENGTH

    session, bundle = ex.session, ex.session.bundle
    (added,) = handles.concept_handle(session, "dots", "add", ADD_STRENGTH)
    plain = recipe(ex, added, prompt="An image of star.")
    r = session.complete(plain)
    # what the row says the blocks read is what the library's edit read in a generation
    kinds = {"dots": "style"}
    with session.unet() as pipe, prompt_added(pipe, [added], kinds, bundle.vocabulary) as (edit,):
        generate(pipe, [r.prompt], [r.seed], r.steps, r.guidance)
    assert edit.texts == [("an image of star .", "an image of star in dots style .")]
    assert handles.prompt_read(session, added, r.prompt) == edit.texts[0]
    (row,), overall = handles.row_effects(session, r)
    assert row.intervention == "add dots: prompt rewritten, strength 1"
    assert row.explanation.startswith('read as "an image of star in dots style ." by every cross-attention block')
    assert "its selected features' activation" in row.explanation and "judge" in row.explanation
    # the features it reports: dots's selection as the paper's removal makes it, over the steps used
    stats = bundle.concept_stats([measured_as(bundle, added)])[added.point]
    used = {stats.row_for_timestep(float(t)) for t in session.run(r, capture=[added.point]).timesteps}
    per_row = selected_per_row(measured_as(bundle, added), stats)
    assert row.features == len(torch.cat([per_row[i] for i in used]).unique()) > 0
    assert row.judge_before.startswith(("sees dots", "does not see dots")) and overall.startswith("Judge:")
    assert not np.array_equal(session.render(r), session.render(r.with_interventions(())))
    # a prompt that names the concept already: nothing rewritten, the image and activation unchanged
    named = session.complete(recipe(ex, added))
    (row,), _ = handles.row_effects(session, named)
    assert row.explanation.startswith(
        'nothing rewritten: the prompt already names dots (read as "an image of star in dots style .")'
    )
    assert row.before == row.after and "activation about the same" in row.explanation
    assert "try a larger strength" not in row.explanation  # no strength adds what is named already
    assert np.array_equal(session.render(named), session.render(named.with_interventions(())))
    # another style named: replaced by the added one
    swapped = session.complete(recipe(ex, replace(added, concepts=("rings",))))
    assert handles.row_effects(session, swapped)[0][0].explanation.startswith(
        'read as "an image of star in rings style ."'
    )


def test_a_prompt_add_without_a_default_tau_runs_and_says_its_features_are_not_measured(ex):
    from explorer import handles

    session = ex.session
    (added,) = handles.concept_handle(session, "heart", "add", 1.0)  # the tiny table: no object default but star's
    (row,), _ = handles.row_effects(session, session.complete(recipe(ex, added, prompt="An image in dots style.")))
    assert row.explanation.startswith('read as "an image in dots style with heart ." by every cross-attention block')
    assert "its features are not measured (no default tau/gamma for 'heart'" in row.explanation
    assert row.features == 0


def test_an_addconcept_recipe_from_before_prompt_add_still_loads_runs_and_says_what_it_did(ex):
    from explorer import handles
    from explorer import intervention_table as table
    from explorer.recipes import intervention_from_dict
    from saeuron_core.interventions import AddConcept

    style = ex.session.bundle.point_of_kind["style"]
    # what the add handle made before (the paper's selected latents steered in, 2x), as a recipe held it
    old = {"type": "AddConcept", "point": style, "concepts": ["dots"], "strength": 2.0, "tau": [99.0], "steps": None}
    (iv,) = ex.session.bundle.add_concepts(["dots"], 2.0, latents=True)
    assert intervention_from_dict(old) == iv and isinstance(iv, AddConcept)
    r = ex.session.complete(recipe(ex, iv, prompt="An image of star."))
    assert (
        recipe_from_json(recipe_to_json(r)) == r and recipe_from_query(recipe_to_query(r), r.model, r.sae, r.stats) == r
    )
    assert "AddConcept(concepts=('dots',), strength=2.0" in recipe_to_python(r)
    assert table.row_of(old)[1:8] == ["add", style, "dots", "2x", "0", "", "everywhere"]
    (row,), _ = handles.row_effects(ex.session, r)
    assert row.intervention == f"add dots at {style} (2x, latents steered in)" and row.features > 0
    with pytest.raises(SaeuronError, match="concept strength .x typical top activation. must be in"):
        ex.session.recipe(PROMPT, 0, 3, 4.0, json.dumps([{**old, "strength": 101.0}]))
