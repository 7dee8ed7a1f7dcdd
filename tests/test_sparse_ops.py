"""Every sparse implementation of SAE training (decode, encoder backward, AuxK) gives the outputs
and gradients of dense autograd; the implementation is chosen by device."""

import pytest
import torch
import torch.nn.functional as F

from saeuron_core import sparse_ops
from saeuron_core.errors import SaeuronError
from saeuron_core.sae import SaeConfig, TopKSae

ON_CPU = ("cpu", "gather")  # triton needs CUDA: only its selection is tested here


def make_sae(impl: str, dtype=torch.float32) -> TopKSae:
    torch.manual_seed(3)
    sae = TopKSae(SaeConfig(d_in=8, num_latents=64, k=4))
    with torch.no_grad():
        sae.encoder.bias.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
    sae = sae.to(dtype)
    sae.sparse_impl = impl
    return sae


def dense_reference(sae: TopKSae, x: torch.Tensor, dead: torch.Tensor):
    """FVU + AuxK with a dense code [N, n_latents] and autograd everywhere (float32)."""
    W, b, W_dec, b_dec = (p.float() for p in (sae.encoder.weight, sae.encoder.bias, sae.W_dec, sae.b_dec))
    pre = F.relu(F.linear(x - b_dec, W, b))
    top_acts, top_idx = pre.topk(sae.cfg.k, dim=-1, sorted=False)
    z = torch.zeros_like(pre).scatter(1, top_idx, top_acts)
    x_hat = z @ W_dec + b_dec
    residual = x - x_hat
    total = (x - x.mean(0)).pow(2).sum()
    k_aux = min(sae.d_in // 2, int(dead.sum()))
    aux_acts, aux_idx = torch.where(dead[None], pre, -torch.inf).topk(k_aux, dim=-1, sorted=False)
    z_aux = torch.zeros_like(pre).scatter(1, aux_idx, F.relu(aux_acts))
    auxk = (z_aux @ W_dec - residual.detach()).pow(2).sum() / total
    return x_hat, residual.pow(2).sum() / total, auxk


@pytest.mark.parametrize("impl", ON_CPU)
def test_outputs_and_gradients_match_dense_autograd(impl):
    sae = make_sae(impl)
    x = torch.randn(50, 8) * 2
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    out = sae(x, dead_mask=dead)
    (out.fvu + 0.5 * out.auxk_loss).backward()
    sparse = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    x_hat, fvu, auxk = dense_reference(sae, x, dead)
    (fvu + 0.5 * auxk).backward()
    assert torch.allclose(out.sae_out, x_hat, atol=1e-5)
    assert torch.allclose(out.fvu, fvu, atol=1e-6) and torch.allclose(out.auxk_loss, auxk, atol=1e-6)
    assert out.auxk_loss > 0
    for name, p in sae.named_parameters():
        assert torch.allclose(sparse[name], p.grad, atol=1e-5), name


def test_gather_path_in_small_chunks_matches_the_cpu_path(monkeypatch):
    """The gather path's token chunks (bounded memory) add up to the same gradients."""
    monkeypatch.setattr(sparse_ops, "GATHER_CHUNK_ELEMENTS", 7 * 4 * 8)  # 7 tokens per chunk
    grads = {}
    for impl in ON_CPU:
        sae = make_sae(impl)
        out = sae(torch.randn(50, 8, generator=torch.Generator().manual_seed(1)))
        out.fvu.backward()
        grads[impl] = {n: p.grad for n, p in sae.named_parameters()}
    for name, g in grads["cpu"].items():
        assert torch.allclose(grads["gather"][name], g, atol=1e-5), name


@pytest.mark.parametrize("impl", ON_CPU)
def test_bfloat16_storage_computes_in_float32(impl):
    """16-bit weights: the arithmetic is float32 (weights upcast), gradients land in bfloat16."""
    sae = make_sae(impl, torch.bfloat16)
    x = torch.randn(40, 8)
    out = sae(x)
    assert out.sae_out.dtype == torch.float32
    out.fvu.backward()
    assert all(p.grad.dtype == torch.bfloat16 for p in sae.parameters())
    _, fvu, _ = dense_reference(sae, x, torch.zeros(64, dtype=torch.bool))
    assert torch.allclose(out.fvu, fvu, atol=1e-5)


def test_bf16_autocast_runs_the_encoder_in_bfloat16_and_the_gradients_in_float32():
    sae = make_sae("cpu")
    x = torch.randn(40, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(x)
    assert out.latent_acts.dtype == torch.bfloat16 and out.sae_out.dtype == torch.float32
    out.fvu.backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in sae.parameters())
    _, fvu, _ = dense_reference(sae, x, torch.zeros(64, dtype=torch.bool))
    assert abs(out.fvu.item() - fvu.item()) < 0.05 * fvu.item()  # bfloat16 pre-activations: ~3 digits


def test_the_implementation_is_chosen_by_device(monkeypatch):
    assert sparse_ops.select("cpu").name == "cpu"
    assert sparse_ops.select("mps").name == "gather"
    monkeypatch.setattr(sparse_ops, "triton_available", lambda: False)
    assert sparse_ops.select("cuda:0", 1024).name == "gather"
    monkeypatch.setattr(sparse_ops, "triton_available", lambda: True)
    assert sparse_ops.select("cuda:0", 1024).name == "triton"
    assert sparse_ops.select("cuda", 1001).name == "gather"  # its backward kernel needs n % 8 == 0
    assert make_sae(None).sparse_ops.name == "cpu"


def test_unknown_or_unavailable_implementation_is_one_line():
    with pytest.raises(SaeuronError, match="unknown sparse implementation"):
        sparse_ops.get("dense")
    if not sparse_ops.triton_available():
        with pytest.raises(SaeuronError, match="needs the triton package"):
            sparse_ops.get("triton")
