"""The TopK SAE: equations, training helpers, checkpoint files and sparsify compatibility."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from saeuron_core.errors import SaeuronError  # noqa: E402
from saeuron_core.sae import SaeConfig, TopKSae, load_many  # noqa: E402


def make_sae(d_in: int = 8, num_latents: int = 32, k: int = 4, seed: int = 0) -> TopKSae:
    torch.manual_seed(seed)
    sae = TopKSae(SaeConfig(d_in=d_in, num_latents=num_latents, k=k))
    with torch.no_grad():  # a non-trivial encoder bias and b_dec, so every term is exercised
        sae.encoder.bias.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
    return sae


def test_config_resolves_and_validates():
    assert SaeConfig(d_in=8, expansion_factor=4).num_latents == 32
    assert SaeConfig(d_in=8, num_latents=10, k=4).num_latents == 10
    with pytest.raises(SaeuronError, match="k must be in"):
        SaeConfig(d_in=2, num_latents=4, k=5)
    with pytest.raises(SaeuronError, match="d_in"):
        SaeConfig(d_in=-1)
    unset = SaeConfig(expansion_factor=4)  # a training config: d_in comes from the hook point
    assert unset.num_latents == 0 and unset.with_d_in(8).num_latents == 32
    with pytest.raises(SaeuronError, match="no d_in"):
        TopKSae(unset)
    with pytest.raises(SaeuronError, match="d_in=8"):
        SaeConfig(d_in=8).with_d_in(16)
    # num_latents given: expansion_factor records the ratio (cfg.json says what was built)
    assert SaeConfig(d_in=8, num_latents=64, k=4).expansion_factor == 8


def test_initialisation_follows_the_paper():
    torch.manual_seed(0)
    sae = TopKSae(SaeConfig(d_in=8, num_latents=32, k=4))
    assert torch.equal(sae.encoder.bias, torch.zeros(32))
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-6)
    expected = sae.encoder.weight / sae.encoder.weight.norm(dim=1, keepdim=True)
    assert torch.allclose(sae.W_dec, expected, atol=1e-6)


def test_encode_and_decode_follow_the_equations():
    sae = make_sae()
    x = torch.randn(3, 5, 8)
    top_acts, top_indices = sae.encode(x)
    assert top_acts.shape == top_indices.shape == (3, 5, 4)
    pre = torch.relu((x - sae.b_dec) @ sae.encoder.weight.T + sae.encoder.bias)
    expected_acts = pre.topk(4, dim=-1).values
    assert torch.allclose(top_acts.sort(-1, descending=True).values, expected_acts, atol=1e-6)
    z = sae.dense_codes(top_acts, top_indices)
    assert z.shape == (3, 5, 32) and ((z != 0).sum(-1) <= 4).all()
    x_hat = sae.decode(top_acts, top_indices)
    assert x_hat.shape == (3, 5, 8)
    assert torch.allclose(x_hat, z @ sae.W_dec + sae.b_dec, atol=1e-5)


def test_wrong_input_width_is_named():
    with pytest.raises(SaeuronError, match="7 channels but the SAE's d_in is 8"):
        make_sae().encode(torch.randn(2, 7))


def test_forward_losses():
    sae = make_sae()
    x = torch.randn(64, 8)
    out = sae(x)
    assert torch.allclose(out.fvu, (out.sae_out - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert out.auxk_loss.item() == 0.0
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:6] = True
    out = sae(x, dead_mask=dead)
    # AuxK by hand: the top d_in // 2 = 4 dead pre-activations reconstruct the residual
    pre = torch.relu((x - sae.b_dec) @ sae.encoder.weight.T + sae.encoder.bias)[:, :6]
    acts, idx = pre.topk(4, dim=-1)
    residual_hat = (acts[..., None] * sae.W_dec[idx]).sum(1)
    expected = ((residual_hat - (x - out.sae_out)) ** 2).sum() / (x - x.mean(0)).pow(2).sum()
    assert torch.allclose(out.auxk_loss, expected, atol=1e-5)
    (out.fvu + out.auxk_loss).backward()
    assert sae.W_dec.grad is not None and sae.encoder.weight.grad is not None


def test_decoder_renormalisation_and_parallel_gradient_removal():
    sae = make_sae()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(32, 1) * 3 + 0.1)
    sae.set_decoder_norm_to_unit_norm()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-6)

    grad = torch.randn(32, 8)
    sae.W_dec.grad = grad.clone()
    sae.remove_gradient_parallel_to_decoder_directions()
    rows = sae.W_dec.detach()
    assert torch.allclose((sae.W_dec.grad * rows).sum(1), torch.zeros(32), atol=1e-5)
    # only the parallel component went: what was removed is a multiple of each row
    removed = grad - sae.W_dec.grad
    assert torch.allclose(removed, (grad * rows).sum(1, keepdim=True) * rows, atol=1e-5)


def test_parallel_gradient_removal_needs_a_gradient():
    with pytest.raises(SaeuronError, match="no gradient"):
        make_sae().remove_gradient_parallel_to_decoder_directions()


def test_geometric_median_initialisation():
    sae = make_sae(d_in=2, num_latents=4, k=1)
    sae.init_b_dec_geometric_median(torch.tensor([[0.0, 0], [1, 0], [2, 0], [3, 0], [100, 0]]))
    assert torch.allclose(sae.b_dec, torch.tensor([2.0, 0.0]), atol=1e-3)

    torch.manual_seed(1)
    points = torch.randn(300, 2)
    points[:30] += 40  # outliers drag the mean, not the median
    sae.init_b_dec_geometric_median(points)
    median = sae.b_dec.detach()

    def cost(m):
        return (points - m).norm(dim=1).sum()

    for shift in ([0.05, 0], [-0.05, 0], [0, 0.05], [0, -0.05]):
        assert cost(median) <= cost(median + torch.tensor(shift))
    assert cost(median) < cost(points.mean(0))


def test_save_load_round_trip(tmp_path):
    sae = make_sae()
    sae.save(tmp_path / "point")
    assert sorted(p.name for p in (tmp_path / "point").iterdir()) == ["cfg.json", "sae.safetensors"]
    cfg = json.loads((tmp_path / "point" / "cfg.json").read_text())
    assert cfg["d_in"] == 8 and cfg["num_latents"] == 32 and cfg["k"] == 4
    loaded = TopKSae.load(tmp_path / "point")
    assert loaded.cfg == sae.cfg
    for name, tensor in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x = torch.randn(10, 8)
    assert torch.equal(loaded.decode(*loaded.encode(x)), sae.decode(*sae.encode(x)))
    assert TopKSae.load(tmp_path / "point", dtype=torch.float16).W_dec.dtype == torch.float16


def test_load_many_keys_by_hook_point(tmp_path):
    make_sae(seed=1).save(tmp_path / "up_blocks.1.attentions.1")
    make_sae(seed=2, num_latents=16).save(tmp_path / "up_blocks.1.attentions.0")
    (tmp_path / "notes").mkdir()
    saes = load_many(tmp_path)
    assert list(saes) == ["up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]
    assert saes["up_blocks.1.attentions.0"].num_latents == 16
    with pytest.raises(SaeuronError, match="holds no SAE"):
        load_many(tmp_path / "notes")


def test_bad_checkpoints_are_named(tmp_path):
    folder = tmp_path / "sae"
    make_sae().save(folder)
    weights = folder / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    with pytest.raises(SaeuronError, match="not a readable safetensors file"):
        TopKSae.load(folder)

    make_sae().save(folder)
    config = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**config, "d_in": 9}))
    with pytest.raises(SaeuronError, match=r"encoder.weight has shape \(32, 8\), but cfg.json \(d_in=9"):
        TopKSae.load(folder)

    (folder / "cfg.json").write_text(json.dumps({**config, "activation": "groupmax"}))
    with pytest.raises(SaeuronError, match="activation='groupmax' is not supported"):
        TopKSae.load(folder)

    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(SaeuronError, match="not valid JSON"):
        TopKSae.load(folder)

    (folder / "cfg.json").unlink()
    with pytest.raises(SaeuronError, match="no such file"):
        TopKSae.load(folder)


def test_matches_a_sae_trained_with_sparsify(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(0)
    theirs = sparsify.SparseCoder(16, sparsify.SparseCoderConfig(num_latents=64, k=4))
    opt = torch.optim.Adam(theirs.parameters(), lr=1e-3)
    data = torch.randn(256, 16) @ torch.randn(16, 16)
    for i in range(0, 256, 64):
        out = theirs(data[i : i + 64])
        opt.zero_grad()
        out.fvu.backward()
        opt.step()
    theirs.save_to_disk(tmp_path / "theirs")

    ours = TopKSae.load(tmp_path / "theirs")
    x = torch.randn(32, 16)
    with torch.no_grad():
        their_enc = theirs.encode(x)
        our_enc = ours.encode(x)
        assert torch.allclose(
            ours.dense_codes(*our_enc), ours.dense_codes(their_enc.top_acts, their_enc.top_indices), atol=1e-6
        )
        assert torch.allclose(
            ours.decode(*our_enc), theirs.decode(their_enc.top_acts, their_enc.top_indices), atol=1e-5
        )
        dead = torch.arange(64) % 3 == 0
        their_out, our_out = theirs(x, dead_mask=dead), ours(x, dead_mask=dead)
        assert torch.allclose(our_out.fvu, their_out.fvu, atol=1e-6)
        assert torch.allclose(our_out.auxk_loss, their_out.auxk_loss, atol=1e-6)

    # and the other way round: sparsify opens what we save
    ours.save(tmp_path / "ours")
    reopened = sparsify.SparseCoder.load_from_disk(tmp_path / "ours")
    with torch.no_grad():
        assert torch.allclose(reopened.decode(*reopened.encode(x)[:2]), ours.decode(*ours.encode(x)), atol=1e-6)


def test_sparse_backward_matches_dense_autograd():
    """The fused encoder's gradients equal plain autograd through ReLU + topk, AuxK included."""
    torch.manual_seed(3)
    sae = TopKSae(SaeConfig(d_in=8, num_latents=64, k=4))
    x = torch.randn(50, 8)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    out = sae(x, dead_mask=dead)
    (out.fvu + out.auxk_loss).backward()
    fused = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()

    # reference: dense pre-activations, autograd everywhere
    pre = F.relu(sae.encoder(x - sae.b_dec))
    top_acts, top_idx = pre.topk(4, dim=-1, sorted=False)
    x_hat = F.embedding_bag(top_idx, sae.W_dec, per_sample_weights=top_acts, mode="sum") + sae.b_dec
    residual = x - x_hat
    total = (x - x.mean(0)).pow(2).sum()
    aux_acts, aux_idx = torch.where(dead[None], pre, -torch.inf).topk(4, dim=-1, sorted=False)
    aux_hat = F.embedding_bag(aux_idx, sae.W_dec, per_sample_weights=aux_acts, mode="sum")
    loss = residual.pow(2).sum() / total + (aux_hat - residual.detach()).pow(2).sum() / total
    loss.backward()
    for name, p in sae.named_parameters():
        assert torch.allclose(fused[name], p.grad, atol=1e-5), name
