"""Intervals and seed derivation against hand-computed cases."""

import pytest

from saeuron_core import minicanvas as mc
from saeuron_core.errors import SaeuronError
from saeuron_core.intervals import Rate, derive_seed, paired_bootstrap, wilson


def test_wilson_hand_computed():
    # z = 1.96: 5/10 -> centre 0.5, half = 1.96 * sqrt(0.025 + 1.96^2 / 400) / (1 + 1.96^2 / 10)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    # 0/10: lo = 0, hi = z^2 / (n + z^2)
    z2 = 1.959963984540054**2
    assert wilson(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert wilson(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    # Newcombe (1998), table I: the textbook values
    assert wilson(5, 8) == pytest.approx((0.3057, 0.8632), abs=1e-4)
    assert wilson(0, 4) == pytest.approx((0.0, 0.4899), abs=1e-4)
    assert wilson(4, 4) == pytest.approx((0.5101, 1.0), abs=1e-4)
    for n in (3, 6, 12, 24):  # floating point used to leave lo ~1e-17 > 0 = k / n here
        assert wilson(0, n)[0] == 0.0 and wilson(n, n)[1] == 1.0
    for bad in ((3, 2), (-1, 4)):
        with pytest.raises(SaeuronError, match="0 <= k <= n"):
            wilson(*bad)
    r = Rate(3, 12).as_dict()
    assert r["value"] == 0.25 and r["lo"] < 0.25 < r["hi"] and (r["k"], r["n"]) == (3, 12)


def test_an_empty_sample_has_the_whole_unit_interval_and_no_rate():
    # no trials reject no proportion: the interval is all of [0, 1], finite, and the rate undefined
    assert wilson(0, 0) == (0.0, 1.0)
    empty = Rate(0, 0).as_dict()
    assert (empty["lo"], empty["hi"]) == (0.0, 1.0) and empty["value"] != empty["value"]
    # reports say "no data", not "- [0.0, 100.0]"
    from saeuron_core.minicanvas.benchmark_report import _with_interval

    assert _with_interval(empty["value"], empty) == "-"
    assert _with_interval(0.25, Rate(3, 12).as_dict()).startswith("25.00% [")
    from saeuron_core.minicanvas.control import markdown

    rate = Rate(1, 2).as_dict()
    row = {
        "concept": "dots",
        "features": 3,
        "ablate": {"top1": {"UA": empty, "CRA": rate}},
        "steer": {"top1@2": {"shows_concept": empty, "retains_other_kind": rate}},
    }
    table = markdown([row])
    assert table.count("no data") == 2 and "nan" not in table and "| 50% [" in table


def test_paired_bootstrap_hand_computed():
    same = paired_bootstrap([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])
    assert same["mean"] == pytest.approx(0.1) and same["lo"] == pytest.approx(0.1) and same["hi"] == pytest.approx(0.1)
    # two units with differences 0 and 1: resampled means are 0 / 0.5 / 1 with probabilities
    # 1/4, 1/2, 1/4, so the 2.5% and 97.5% quantiles are 0 and 1
    two = paired_bootstrap([1.0, 1.0], [1.0, 0.0])
    assert two["mean"] == 0.5 and two["lo"] == 0.0 and two["hi"] == 1.0
    # differences (0, 0, 3): P(all three resampled are 0) = 8/27 > 2.5%, P(all 3) = 1/27 > 2.5%
    three = paired_bootstrap([0, 0, 3], [0, 0, 0])
    assert three["lo"] == 0.0 and three["hi"] == 3.0 and three["mean"] == 1.0
    assert paired_bootstrap([0.1, 0.5, 0.9, 0.2], [0.0] * 4) == paired_bootstrap(
        [0.1, 0.5, 0.9, 0.2], [0.0] * 4
    )  # reproducible
    with pytest.raises(SaeuronError, match="equal-length"):
        paired_bootstrap([1, 2], [1])
    with pytest.raises(SaeuronError, match="no units"):
        paired_bootstrap([], [])


def test_seed_derivation_is_deterministic_distinct_and_inside_the_split():
    bases = mc.split_seeds("heldout", 6)
    prompts = [mc.prompt(o, s) for o, s in mc.all_pairs()] + [mc.prompt(o) for o in mc.OBJECTS]
    seeds = [mc.prompt_seeds(bases, p) for p in prompts]
    flat = [s for row in seeds for s in row]
    assert len(set(flat)) == len(flat)  # every (prompt, index) its own seed
    assert all(mc.split_of(s) == "heldout" for s in flat)
    assert seeds == [mc.prompt_seeds(bases, p) for p in prompts]  # what any method asks for again
    sweep = [s for p in prompts for s in mc.prompt_seeds(mc.split_seeds("sweep", 4), p)]
    assert all(mc.split_of(s) == "sweep" for s in sweep) and not set(sweep) & set(flat)
    assert derive_seed(7, "a", range(10, 20)) in range(10, 20)
    assert derive_seed(7, "a", range(0, 1 << 30)) != derive_seed(8, "a", range(0, 1 << 30))
    with pytest.raises(SaeuronError, match="no seeds"):
        mc.prompt_seeds([], prompts[0])


def test_protocol_jobs_are_the_same_for_every_method():
    from saeuron_core.minicanvas.evaluation import decorrelated_jobs
    from saeuron_core.minicanvas.image_sets import protocol_prompts

    bases = mc.split_seeds("heldout", 2)
    jobs = decorrelated_jobs(protocol_prompts(), bases)
    assert jobs == decorrelated_jobs(protocol_prompts(), bases)
    assert len(jobs) == 2 * len(protocol_prompts())
    by_pair = {}
    for o, s, seed in jobs:
        by_pair.setdefault((o, s), []).append(seed)
    assert len({tuple(v) for v in by_pair.values()}) == len(by_pair)  # no two prompts share seeds
