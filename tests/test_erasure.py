"""ESD and UCE weight edits: the closed form, the fine-tuning loop, applying and restoring."""

import json

import pytest
import torch

from saeuron_core.baselines.erasure import (
    EsdConfig,
    UceConfig,
    check_concepts,
    erase,
    esd_erase,
    esd_loss,
    text_embeddings,
    uce_erase,
    uce_pairs,
    uce_solve,
)
from saeuron_core.baselines.methods import parse_methods, prepare_removal
from saeuron_core.edits import META_FILE, WeightEdit, applied, cross_attention_parameters
from saeuron_core.errors import SaeuronError
from saeuron_core.pipeline import load_pipeline, model_info


def brute_force_uce(w_old, c, v, p, se, sp, lamb):
    """argmin_W se||W C^T - V^T||^2 + sp||W P^T - W_old P^T||^2 + lamb||W - W_old||^2 by lstsq."""
    d = w_old.shape[1]
    a = torch.cat([se**0.5 * c, sp**0.5 * p, lamb**0.5 * torch.eye(d, dtype=torch.float64)])
    b = torch.cat([se**0.5 * v, sp**0.5 * p @ w_old.T, lamb**0.5 * w_old.T])
    return torch.linalg.lstsq(a, b).solution.T


@pytest.mark.parametrize("se,sp,lamb", [(1.0, 1.0, 0.1), (3.0, 0.2, 0.5), (1.0, 0.0, 1e-3)])
def test_uce_closed_form_matches_least_squares(se, sp, lamb):
    g = torch.Generator().manual_seed(0)
    w_old = torch.randn(7, 5, generator=g, dtype=torch.float64)
    c = torch.randn(3, 5, generator=g, dtype=torch.float64)
    v = torch.randn(3, 7, generator=g, dtype=torch.float64)
    p = torch.randn(9, 5, generator=g, dtype=torch.float64)
    w = uce_solve(w_old, c, v, p, se, sp, lamb)
    torch.testing.assert_close(w, brute_force_uce(w_old, c, v, p, se, sp, lamb), rtol=1e-8, atol=1e-8)


def test_uce_edit_is_exact_without_competing_constraints():
    g = torch.Generator().manual_seed(1)
    w_old, c, v = torch.randn(6, 8, generator=g), torch.randn(2, 8, generator=g), torch.randn(2, 6, generator=g)
    w = uce_solve(w_old, c, v, torch.zeros(0, 8), 1.0, 0.0, 1e-6)
    torch.testing.assert_close(c @ w.T, v, rtol=1e-3, atol=1e-3)


def test_uce_rejects_mismatched_shapes():
    with pytest.raises(SaeuronError, match="shapes do not fit"):
        uce_solve(torch.randn(4, 3), torch.randn(2, 5), torch.randn(2, 4), torch.randn(1, 3))


@pytest.fixture(scope="module")
def tiny(tiny_bundle):
    pipe = load_pipeline(str(tiny_bundle / "model"))
    return pipe, model_info(pipe)


def test_uce_changes_only_cross_attention_keys_and_values(tiny):
    pipe, info = tiny
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    edit = uce_erase(pipe, info, ["dots"])
    assert edit.deltas and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in edit.deltas)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())  # computing edits nothing
    # the edit moves the concept's keys / values toward the target's, more than the preserved ones move
    old, new = uce_pairs(pipe, ["An image of star in dots style."], ["An image of star."], "dots")
    _, keep = text_embeddings(pipe, ["An image of heart in solid style."])
    name = next(n for n in edit.deltas if n.endswith("to_k.weight"))
    w = dict(pipe.unet.named_parameters())[name].detach()
    w_new = w + edit.deltas[name]
    assert (old @ w_new.T - new @ w.T).norm() < 0.5 * (old @ w.T - new @ w.T).norm()
    assert (keep[0] @ (w_new - w).T).norm() < (old @ (w_new - w).T).norm()


def test_applied_restores_exactly_also_after_errors(tiny):
    pipe, info = tiny
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    edit = uce_erase(pipe, info, ["dots"])
    name = next(iter(edit.deltas))
    with applied(pipe.unet, edit):
        assert not torch.equal(pipe.unet.state_dict()[name], original[name])
        with pytest.raises(SaeuronError, match="fingerprint mismatch"):
            with applied(pipe.unet, edit):  # the base is already edited
                pass
    with pytest.raises(RuntimeError, match="boom"):
        with applied(pipe.unet, edit):
            raise RuntimeError("boom")
    assert all(torch.equal(original[k], v) for k, v in pipe.unet.state_dict().items())


def test_weight_edit_round_trip_and_bad_files(tiny, tmp_path):
    pipe, info = tiny
    edit = uce_erase(pipe, info, ["star", "dots"])
    edit.save(tmp_path / "e")
    back = WeightEdit.load(tmp_path / "e")
    assert back.method == "uce" and back.concepts == ("star", "dots") and back.base_fingerprint == edit.base_fingerprint
    assert all(torch.equal(back.deltas[k], v) for k, v in edit.deltas.items())
    with pytest.raises(SaeuronError, match="not a saved erasure"):
        WeightEdit.load(tmp_path)
    (tmp_path / "e" / META_FILE).write_text("{not json")
    with pytest.raises(SaeuronError, match="malformed"):
        WeightEdit.load(tmp_path / "e")
    other = WeightEdit("uce", ("dots",), {"no.such.weight": torch.zeros(1)}, "x")
    with pytest.raises(SaeuronError, match="made for another model"):
        with applied(pipe.unet, other):
            pass


def test_bad_concepts_and_methods(tiny):
    pipe, info = tiny
    with pytest.raises(SaeuronError, match="'dog' is not in this model's vocabulary"):
        check_concepts(info, ["dog"])
    with pytest.raises(SaeuronError, match="no concept"):
        check_concepts(info, [" "])
    with pytest.raises(SaeuronError, match="unknown erasure method 'salun'"):
        erase(pipe, info, "salun", ["dots"])
    with pytest.raises(SaeuronError, match="unknown method 'esd2'"):
        parse_methods("saeuron,esd2")
    with pytest.raises(SaeuronError, match="iterations must be a positive integer"):
        EsdConfig(iterations=0)
    with pytest.raises(SaeuronError, match="lamb must be > 0"):
        UceConfig(lamb=0)


MICRO = dict(iterations=12, batch_size=2, pool_size=4, pool_steps=2, lr=3e-3, checkpoint_every=4)


@pytest.mark.slow
def test_esd_lowers_its_loss_and_changes_only_cross_attention(tiny):
    pipe, info = tiny
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    params = cross_attention_parameters(pipe.unet)
    frozen = {n: p.detach().clone() for n, p in params.items()}
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([500])
    _, cond = text_embeddings(pipe, ["An image of star in dots style.", "An image of heart in dots style."])
    _, anchor = text_embeddings(pipe, ["An image of star.", "An image of heart."])

    def loss():
        with torch.no_grad():
            return esd_loss(pipe.unet, frozen, x_t, t, cond, anchor, 1.0).item()

    start = loss()
    edit = esd_erase(pipe, info, ["dots"], EsdConfig(**{**MICRO, "iterations": 30}))
    assert all(torch.equal(original[k], v) for k, v in pipe.unet.state_dict().items())  # left as it was
    assert edit.deltas and all(".attn2." in n for n in edit.deltas)
    assert any(d.abs().max() > 0 for d in edit.deltas.values())
    with applied(pipe.unet, edit):
        assert loss() < 0.9 * start
    assert edit.settings["final_loss"] == edit.settings["final_loss"]  # finite, recorded


def test_esd_resumes_bit_identically(tiny, tmp_path):
    pipe, info = tiny
    cfg = EsdConfig(**MICRO)
    straight = esd_erase(pipe, info, ["star"], cfg)
    calls = []
    with pytest.raises(SaeuronError, match="checkpoint saved"):
        esd_erase(
            pipe,
            info,
            ["star"],
            cfg,
            work=tmp_path,
            progress=lambda i, n, loss: calls.append(i),
            should_stop=lambda: len(calls) >= 5,
        )
    assert (tmp_path / "esd_state.pt").is_file()
    resumed_from = []
    edit = esd_erase(pipe, info, ["star"], cfg, work=tmp_path, progress=lambda i, n, loss: resumed_from.append(i))
    assert resumed_from[0] == 6  # iterations 1-5 were not redone
    assert all(torch.equal(edit.deltas[k], straight.deltas[k]) for k in straight.deltas)
    with pytest.raises(SaeuronError, match="another ESD run"):
        esd_erase(pipe, info, ["dots"], cfg, work=tmp_path)


def test_removals_share_one_interface_and_cache_edits(tiny, tiny_bundle, tmp_path):
    pipe, info = tiny
    logs = []
    first = prepare_removal(pipe, info, "uce", ["dots"], cache=tmp_path, log=logs.append)
    again = prepare_removal(pipe, info, "uce", ["dots"], cache=tmp_path, log=logs.append)
    assert "computing" in logs[0] and "cached" in logs[1]
    assert first.extra_storage_bytes == again.extra_storage_bytes > 0
    saved = next((tmp_path / "uce").iterdir())
    assert json.loads((saved / META_FILE).read_text())["concepts"] == ["dots"]
    none = prepare_removal(pipe, info, "none", ["dots"])
    with none.active(pipe), again.active(pipe):
        pass
    with pytest.raises(SaeuronError, match="needs the model's SAEs"):
        prepare_removal(pipe, info, "saeuron", ["dots"])


def cli(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "saeuron_core.cli", "--threads", "1", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_erase_and_attack_commands(tiny_bundle, tmp_path):
    model = str(tiny_bundle / "model")
    proc = cli("erase", "--model", model, "--method", "uce", "--concept", "dots", "--out", str(tmp_path / "uce"))
    assert proc.returncode == 0, proc.stderr
    assert WeightEdit.load(tmp_path / "uce").concepts == ("dots",)
    gen = [
        (
            "generate",
            "--model",
            model,
            "--prompt",
            "An image of star in dots style.",
            "--steps",
            "2",
            "--out",
            str(tmp_path / name),
        )
        for name in ("plain.png", "erased.png")
    ]
    assert cli(*gen[0]).returncode == 0
    proc = cli(*gen[1], "--erasure", str(tmp_path / "uce"))
    assert proc.returncode == 0 and "uce erasure of dots" in proc.stdout, proc.stderr
    import numpy as np
    from PIL import Image

    assert not np.array_equal(
        np.asarray(Image.open(tmp_path / "plain.png")), np.asarray(Image.open(tmp_path / "erased.png"))
    )
    again = cli("erase", "--model", model, "--method", "uce", "--concept", "dots", "--out", str(tmp_path / "uce"))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    proc = cli(
        "attack",
        "--model",
        model,
        "--judge",
        str(tiny_bundle / "judge"),
        "--method",
        "uce",
        "--erasure",
        str(tmp_path / "uce"),
        "--concept",
        "dots",
        "--prompts",
        "2",
        "--steps",
        "3",
        "--gen-steps",
        "2",
        "--out",
        str(tmp_path / "atk"),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "atk" / "attack.json").read_text())
    assert (
        report["method"] == "uce"
        and len(report["prompts"]) == 2
        and len(report["losses"]) == 3
        and 0 <= report["UA_after"] <= 1
    )
    assert (tmp_path / "atk" / "attack.png").is_file()
    bad = [
        (
            ("erase", "--model", model, "--method", "salun", "--concept", "dots", "--out", str(tmp_path / "x")),
            "unknown erasure method 'salun'",
        ),
        (
            ("erase", "--model", model, "--method", "esd", "--concept", "dog", "--out", str(tmp_path / "x")),
            "'dog' is not in this model's vocabulary",
        ),
        (
            (
                "attack",
                "--model",
                model,
                "--method",
                "uce",
                "--concept",
                "dots",
                "--steps",
                "0",
                "--out",
                str(tmp_path / "y"),
            ),
            "attack budget",
        ),
        (
            (
                "attack",
                "--model",
                model,
                "--method",
                "uce",
                "--concept",
                "dots",
                "--steps",
                "-2",
                "--out",
                str(tmp_path / "y"),
            ),
            "attack budget",
        ),
        (
            ("attack", "--model", model, "--method", "esd3", "--concept", "dots", "--out", str(tmp_path / "y")),
            "unknown method 'esd3'",
        ),
        (
            ("attack", "--model", model, "--method", "uce", "--concept", "vangogh", "--out", str(tmp_path / "y")),
            "'vangogh' is not in this model's vocabulary",
        ),
        (
            (
                "attack",
                "--model",
                model,
                "--method",
                "esd",
                "--erasure",
                str(tmp_path / "uce"),
                "--concept",
                "dots",
                "--out",
                str(tmp_path / "y"),
            ),
            "holds a uce erasure",
        ),
    ]
    for args, message in bad:
        proc = cli(*args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
