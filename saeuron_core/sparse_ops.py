"""The sparse products of TopK SAE training, one implementation per device.

Training needs three products with the sparse codes (``indices`` / ``values`` [N, w] of the
selected latents) and never a dense [N, n_latents] code:

- ``decode``: out[t] = sum_j values[t, j] * rows[indices[t, j]]   (the decoder; also grad_x of the encoder)
- its gradients: d rows (an index-add of values x grad_out) and d values (gathered dot products)
- ``encoder_grads``: grad_x, grad_W = G^T x and grad_b of the encoder for a sparse G [N, n_latents]

``select(device)`` picks the implementation:

- ``cpu`` on the CPU: ``embedding_bag`` and ``torch.sparse.mm`` (fast there);
- ``triton`` on CUDA when ``triton`` imports: sparsify's Triton embedding-bag kernels;
- ``gather`` elsewhere (CUDA without triton, MPS): gathers and ``index_add_`` in token chunks of
  bounded memory.

Each gives the gradients of dense autograd up to float rounding (tests/test_sparse_ops.py checks
``cpu`` and ``gather`` on the CPU; ``triton`` needs a GPU).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import SaeuronError

#: Elements of the temporary [chunk, w, d] products of the ``gather`` path (256 MB in float32).
GATHER_CHUNK_ELEMENTS = 2**26
NAMES = ("cpu", "gather", "triton")


class SparseOps:
    """``cpu``: embedding_bag for the decode (and its autograd), sparse.mm for the encoder's grad_W."""

    name = "cpu"

    def decode(self, indices: Tensor, values: Tensor, rows: Tensor) -> Tensor:
        """sum_j values[:, j] * rows[indices[:, j]] for 2-D indices / values; differentiable in values and rows."""
        return F.embedding_bag(indices, rows, per_sample_weights=values.to(rows.dtype), mode="sum")

    def encoder_grads(self, x: Tensor, weight: Tensor, indices: Tensor, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Gradients of pre = x W^T + b where only ``indices`` [N, w] of pre receive ``grad`` [N, w]."""
        grad_x = F.embedding_bag(indices, weight, per_sample_weights=grad.to(weight.dtype), mode="sum")
        n_tokens, width = indices.shape
        # dL/dW = G^T x with G sparse [n_latents, N]: one sparse matmul, no [N, n_latents] tensor
        rows = torch.arange(n_tokens, device=x.device).repeat_interleave(width)
        g_sparse = torch.sparse_coo_tensor(
            torch.stack([indices.reshape(-1), rows]),
            grad.reshape(-1),
            (weight.shape[0], n_tokens),
            check_invariants=False,
        )
        grad_w = torch.sparse.mm(g_sparse, x.to(grad.dtype)).to(weight.dtype)
        return grad_x, grad_w, _grad_bias(weight, indices, grad)


class GatherOps(SparseOps):
    """``gather``: gathers and index_add_ over token chunks (any device; CUDA without triton)."""

    name = "gather"

    def decode(self, indices, values, rows):
        return _GatherDecode.apply(indices, values.to(rows.dtype), rows)

    def encoder_grads(self, x, weight, indices, grad):
        grad = grad.to(weight.dtype)
        grad_x = F.embedding_bag(indices, weight, per_sample_weights=grad, mode="sum")  # a fused gather-sum
        grad_w = _index_add_outer(weight.shape[0], indices, grad, x.to(weight.dtype))
        return grad_x, grad_w, _grad_bias(weight, indices, grad)


class TritonOps(SparseOps):
    """``triton``: sparsify's Triton embedding-bag kernels (forward and its reverse-index backward)."""

    name = "triton"

    def decode(self, indices, values, rows):
        from sparsify.xformers import xformers_embedding_bag

        return xformers_embedding_bag(indices.contiguous(), rows, values.to(rows.dtype).contiguous())

    def encoder_grads(self, x, weight, indices, grad):
        from sparsify.xformers import embedding_bag_bw_rev_indices, embedding_bag_triton

        indices, grad = indices.contiguous(), grad.to(weight.dtype).contiguous()
        grad_x = embedding_bag_triton(indices, weight, grad)
        # the decoder's weight gradient with values = grad and grad_out = x is exactly G^T x
        grad_w, _ = embedding_bag_bw_rev_indices(indices, weight, grad, x.to(weight.dtype).contiguous())
        return grad_x, grad_w, _grad_bias(weight, indices, grad)


_OPS = {"cpu": SparseOps(), "gather": GatherOps(), "triton": TritonOps()}


def get(name: str) -> SparseOps:
    """The implementation called ``name`` (cpu, gather or triton)."""
    if name not in _OPS:
        raise SaeuronError(f"unknown sparse implementation {name!r}; use {', '.join(NAMES)}")
    if name == "triton" and not triton_available():
        raise SaeuronError("the triton sparse implementation needs the triton package (pip install triton) and CUDA")
    return _OPS[name]


def select(device: torch.device | str, num_latents: int = 0) -> SparseOps:
    """The implementation for ``device``: cpu on the CPU; on CUDA triton when it imports (and
    num_latents is a multiple of 8, as its backward kernel needs), else gather; gather elsewhere."""
    kind = torch.device(device).type
    if kind == "cpu":
        return _OPS["cpu"]
    if kind == "cuda" and triton_available() and num_latents % 8 == 0:
        return _OPS["triton"]
    return _OPS["gather"]


@lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether triton (and so sparsify's kernels) can be imported; checked without importing it."""
    return importlib.util.find_spec("triton") is not None and importlib.util.find_spec("sparsify") is not None


def _grad_bias(weight: Tensor, indices: Tensor, grad: Tensor) -> Tensor:
    return torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device).index_add_(
        0, indices.reshape(-1), grad.reshape(-1).to(weight.dtype)
    )


def _chunk(width: int, d: int) -> int:
    return max(1, GATHER_CHUNK_ELEMENTS // max(1, width * d))


def _index_add_outer(n_rows: int, indices: Tensor, values: Tensor, vectors: Tensor) -> Tensor:
    """out[i] = sum over (t, j) with indices[t, j] = i of values[t, j] * vectors[t]: [n_rows, d]."""
    n_tokens, width = indices.shape
    d = vectors.shape[1]
    out = torch.zeros(n_rows, d, dtype=vectors.dtype, device=vectors.device)
    step = _chunk(width, d)
    for lo in range(0, n_tokens, step):
        hi = min(lo + step, n_tokens)
        outer = values[lo:hi, :, None] * vectors[lo:hi, None, :]  # [chunk, w, d]
        out.index_add_(0, indices[lo:hi].reshape(-1), outer.reshape(-1, d))
    return out


class _GatherDecode(torch.autograd.Function):
    """out = sum_j values[:, j] rows[indices[:, j]], backward by gathers and index_add_."""

    @staticmethod
    def forward(ctx, indices, values, rows):
        ctx.save_for_backward(indices, values, rows)
        return F.embedding_bag(indices, rows, per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(ctx, grad_out):
        indices, values, rows = ctx.saved_tensors
        grad_values = grad_rows = None
        if ctx.needs_input_grad[1]:
            n_tokens, width = indices.shape
            grad_values = torch.empty_like(values)
            step = _chunk(width, rows.shape[1])
            for lo in range(0, n_tokens, step):
                hi = min(lo + step, n_tokens)
                grad_values[lo:hi] = (rows[indices[lo:hi]] * grad_out[lo:hi, None, :]).sum(-1)
        if ctx.needs_input_grad[2]:
            grad_rows = _index_add_outer(rows.shape[0], indices, values, grad_out.to(rows.dtype))
        return None, grad_values, grad_rows
