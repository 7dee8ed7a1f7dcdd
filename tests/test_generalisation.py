"""`saeuron evaluate --generalisation`: the split, bad input, and the mode's plumbing on the tiny bundle."""

import json
import shutil
import subprocess
import sys

import pytest

from saeuron_core import minicanvas as mc
from saeuron_core.errors import SaeuronError
from saeuron_core.minicanvas.generalisation import GeneralisationConfig, split_concepts, training_items

VOCAB = {"object": mc.OBJECTS, "style": mc.STYLES}


def test_split_is_deterministic_halves_each_kind_and_records_its_seed():
    a, b = split_concepts(VOCAB, 7), split_concepts(VOCAB, 7)
    assert a == b and a.seed == 7 and a.as_dict()["seed"] == 7
    for kind, names in VOCAB.items():
        assert len(a.in_half[kind]) == len(names) // 2 and a.out_half[kind]
        assert set(a.in_half[kind]) | set(a.out_half[kind]) == set(names) and not set(a.in_half[kind]) & set(
            a.out_half[kind]
        )
    # another seed draws another split for at least one of a few seeds (not a constant)
    assert any(split_concepts(VOCAB, s).in_half != a.in_half for s in range(8, 12))
    assert a.group_of(a.in_half["style"][0]) == "in" and a.group_of(a.out_half["object"][0]) == "out"
    # a string that holds an integer (the command line) is the same seed
    assert split_concepts(VOCAB, "7") == a


def test_split_by_name_and_training_prompts_of_the_half_only():
    s = split_concepts(VOCAB, chosen=("circle", "star", "dots"))
    assert s.seed is None and s.in_half == {"object": ("circle", "star"), "style": ("dots",)}
    items = training_items(s, 2)
    assert len(items) == (2 * 1 + 2) * 2  # 2 pairs and 2 unstyled prompts, 2 seeds each
    assert {it.labels.get("object") for it in items} == {"circle", "star"} and {
        it.labels.get("style") for it in items
    } <= {"dots", None}
    assert all(mc.split_of(it.seed) == "train" for it in items)
    assert len(training_items(s, 1, half=False)) == len(mc.all_pairs()) + len(mc.OBJECTS)


def test_bad_splits_are_clear_errors():
    with pytest.raises(SaeuronError, match="split seed must be an integer, got 1.5"):
        split_concepts(VOCAB, 1.5)
    with pytest.raises(SaeuronError, match="split seed must be an integer, got 'one'"):
        split_concepts(VOCAB, "one")
    with pytest.raises(SaeuronError, match="split seed must be an integer"):
        split_concepts(VOCAB, True)
    with pytest.raises(SaeuronError, match="no style in the SAE's half"):
        split_concepts(VOCAB, chosen=("circle",))
    with pytest.raises(SaeuronError, match="no object outside the SAE's half"):
        split_concepts(VOCAB, chosen=(*mc.OBJECTS, "dots"))
    with pytest.raises(SaeuronError, match="no object in the SAE's half"):
        split_concepts({"object": ("circle",), "style": mc.STYLES}, 0)
    with pytest.raises(SaeuronError, match="no concept vocabulary"):
        split_concepts({}, 0)
    with pytest.raises(SaeuronError, match="unknown concept 'dog'"):
        split_concepts(VOCAB, chosen=("dog",))
    with pytest.raises(SaeuronError, match="'sweep' split"):
        GeneralisationConfig(seeds=(2_000_001,))


def generalise(tiny_bundle, out, *extra, defaults=None):
    cmd = [
        sys.executable,
        "-m",
        "saeuron_core.cli",
        "--threads",
        "1",
        "evaluate",
        "--generalisation",
        "--model",
        str(tiny_bundle / "model"),
        "--defaults",
        str(defaults or tiny_bundle / "defaults.json"),
        "--judge",
        str(tiny_bundle / "judge"),
        "--sae",
        str(tiny_bundle / "sae"),
        "--stats",
        str(tiny_bundle / "stats"),
        "--steps",
        "2",
        "--seeds",
        "1",
        "--train-seeds-per-pair",
        "1",
        "--sae-batch-size",
        "16",
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_bad_input_is_one_line_before_any_work(tiny_bundle, tmp_path):
    proc = generalise(tiny_bundle, tmp_path / "a", "--split-seed", "1.5")
    assert (
        proc.returncode == 2
        and proc.stderr.strip().splitlines()[-1]
        == "saeuron evaluate: error: the split seed must be an integer, got '1.5'"
    )
    proc = generalise(tiny_bundle, tmp_path / "b", "--sae-concept", "star")
    assert proc.returncode == 2 and "leaves no style in the SAE's half" in proc.stderr
    # the tiny defaults table has no tau/gamma for heart: refused before caching anything
    proc = generalise(tiny_bundle, tmp_path / "c", "--concept", "heart", "--work", str(tmp_path / "cw"))
    assert proc.returncode == 2 and "no tau/gamma for heart" in proc.stderr and not (tmp_path / "cw").exists()
    proc = generalise(tiny_bundle, tmp_path / "d", "--method", "esd")
    assert proc.returncode == 2 and "SAeUron only" in proc.stderr
    proc = generalise(tiny_bundle, tmp_path / "f", "--no-full-reference")
    assert proc.returncode == 2 and "--sae / --stats name the full reference" in proc.stderr
    proc = generalise(tiny_bundle, tmp_path / "g", "--no-full-reference", "--match-tokens")
    assert proc.returncode == 2 and "--match-tokens matches the reference SAE's tokens" in proc.stderr
    # a plain SD folder has no concept vocabulary
    plain = tmp_path / "plain"
    shutil.copytree(tiny_bundle / "model", plain)
    (plain / "saeuron.json").unlink()
    cmd = [
        sys.executable,
        "-m",
        "saeuron_core.cli",
        "--threads",
        "1",
        "evaluate",
        "--generalisation",
        "--model",
        str(plain),
        "--out",
        str(tmp_path / "e"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "has no benchmark vocabulary" in proc.stderr


@pytest.mark.slow
def test_tiny_generalisation_run_reports_both_groups_and_resumes(tiny_bundle, tmp_path):
    defaults = tmp_path / "defaults.json"
    defaults.write_text(
        json.dumps({"kinds": {"style": {"tau": 99.0, "gamma": -5.0}, "object": {"tau": 98.0, "gamma": -10.0}}})
    )
    out, work = tmp_path / "gen", tmp_path / "work"
    proc = generalise(tiny_bundle, out, "--split-seed", "3", "--work", str(work), defaults=defaults)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"]["seed"] == 3 and json.loads((work / "split.json").read_text()) == m["split"]
    in_half = {c for v in m["split"]["in_half"].values() for c in v}
    assert len(in_half) == 2  # one of three objects and one of three styles
    for name in ("half", "full"):
        rows = m["rows"][name]
        assert sorted(r["removed"][0] for r in rows) == sorted(["star", "heart", "circle", "dots", "solid", "rings"])
        assert all(r["group"] == ("in" if r["removed"][0] in in_half else "out") for r in rows)
        for group in ("in", "out"):
            s = m["summary"][name][group]["all"]
            chosen = [r for r in rows if r["group"] == group]
            assert s["UA"] == pytest.approx(sum(r["UA"] for r in chosen) / len(chosen))
            assert s["kept_on_target"] == pytest.approx(sum(r["kept_on_target"] for r in chosen) / len(chosen))
            # all kinds: a bootstrap over the group's concepts (objects and styles differ in images per concept)
            assert (
                s["intervals"]["UA"]["units"] == len(chosen)
                and s["intervals"]["UA"]["lo"] - 1e-9 <= s["UA"] <= s["intervals"]["UA"]["hi"] + 1e-9
            )
            for kind in ("object", "style"):
                k = m["summary"][name][group][kind]
                of_kind = [r for r in chosen if r["kind"] == kind]
                iv = k["intervals"]["UA"]  # one kind: Wilson over the pooled images
                assert iv["n"] == sum(r["intervals"]["UA"]["n"] for r in of_kind) and iv["value"] == pytest.approx(
                    k["UA"]
                )
                assert iv["lo"] - 1e-9 <= iv["value"] <= iv["hi"] + 1e-9  # Wilson's end at k = n rounds to 1 - 1e-16
    # the half SAE saw fewer prompts: the in-half pairs and unstyled objects only; the full
    # reference is the bundle's SAE (--sae / --stats)
    assert m["training_items"] == {"half": 2, "full": 12}
    assert m["config"]["full_reference"] and all(str(tiny_bundle) in f for f in m["config"]["full_reference"])
    store = json.loads((work / "store_half" / "store.json").read_text())
    assert {it["labels"].get("object") for it in store["items"]} | {
        it["labels"].get("style") for it in store["items"]
    } <= in_half | {None}
    # the paired difference is half minus full on the same concepts
    diff = m["comparisons"]["out"]["all"]["UA"]
    assert diff["mean"] == pytest.approx(
        m["summary"]["half"]["out"]["all"]["UA"] - m["summary"]["full"]["out"]["all"]["UA"]
    )
    table = (out / "table.md").read_text()
    assert m["config"]["variant"] == "paper" and "SAE removal variant: paper" in table
    assert "| kept on target |" in table and "kept_on_target" in (out / "metrics.csv").read_text()
    assert (
        "outside the SAE's half" in table
        and "Published: SD v1.5 on UnlearnCanvas, Table 3" in table
        and "integer seed 3" in table
    )
    assert "Table 3" in (out / "report.html").read_text()
    # resuming: every removal is read back from the work folder, same numbers
    again = generalise(tiny_bundle, tmp_path / "gen2", "--split-seed", "3", "--work", str(work), defaults=defaults)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "gen2" / "metrics.json").read_text())["rows"] == m["rows"]
    tiny = {"object": ("star", "heart", "circle"), "style": ("dots", "solid", "rings")}
    other_seed = next(s for s in range(100) if split_concepts(tiny, s).in_half != split_concepts(tiny, 3).in_half)
    other = generalise(
        tiny_bundle, tmp_path / "gen3", "--split-seed", str(other_seed), "--work", str(work), defaults=defaults
    )
    assert other.returncode == 2 and "another split" in other.stderr


def test_reference_tokens_are_read_from_the_reference_folders_or_refused(tmp_path):
    import json
    from types import SimpleNamespace

    from saeuron_core.errors import SaeuronError
    from saeuron_core.minicanvas.generalisation import reference_tokens

    (tmp_path / "sae" / "a").mkdir(parents=True)
    (tmp_path / "sae" / "a" / "train_metrics.json").write_text(json.dumps({"tokens": 1000}))
    (tmp_path / "sae" / ".train" / "unet.b").mkdir(parents=True)
    (tmp_path / "sae" / "unet.b").mkdir()
    (tmp_path / "sae" / ".train" / "b").mkdir()
    (tmp_path / "sae" / ".train" / "b" / "metrics.json").write_text(
        json.dumps({"tokens": 2000})
    )  # sparsify-style layout
    full = SimpleNamespace(
        saes={"a": None, "b": None},
        folders=(tmp_path / "sae" / "a", tmp_path / "stats" / "a", tmp_path / "sae" / "unet.b"),
    )
    assert reference_tokens(full) == {"a": 1000, "b": 2000}
    (tmp_path / "sae" / ".train" / "b" / "metrics.json").write_text(json.dumps({"fvu": 0.1}))
    with pytest.raises(SaeuronError, match="recorded training tokens"):
        reference_tokens(full)


@pytest.mark.slow
def test_matched_tokens_train_the_half_sae_as_long_as_the_reference(tiny_bundle, tmp_path):
    defaults = tmp_path / "defaults.json"
    defaults.write_text(
        json.dumps({"kinds": {"style": {"tau": 99.0, "gamma": -5.0}, "object": {"tau": 98.0, "gamma": -10.0}}})
    )
    work = tmp_path / "work"
    proc = generalise(
        tiny_bundle, tmp_path / "gen", "--split-seed", "3", "--work", str(work), "--match-tokens", defaults=defaults
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "gen" / "metrics.json").read_text())["config"]["match_tokens"] is True
    from saeuron_core.store import ActivationStore

    half_store = ActivationStore(work / "store_half-matched")
    checked = 0
    for metrics in (tiny_bundle / "sae" / ".train").glob("*/metrics.json"):
        point = metrics.parent.name
        reference = json.loads(metrics.read_text())["tokens"]
        half = json.loads((work / "sae_half-matched" / ".train" / point / "metrics.json").read_text())
        per_epoch = half_store.token_count(point)
        epochs = max(1, round(reference / per_epoch))  # the whole number of passes nearest the reference
        batches = -(-per_epoch // 16)  # --sae-batch-size 16: the last batch of a pass may be short
        assert half["tokens"] == epochs * batches * 16, (point, reference, per_epoch, half)
        checked += 1
    assert checked == 2
