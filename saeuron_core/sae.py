"""The TopK sparse autoencoder (SAE) of SAeUron, in EleutherAI sparsify's checkpoint layout.

One folder per hook point holds ``cfg.json`` (config fields plus ``d_in``) and
``sae.safetensors`` with ``encoder.weight [n, d]``, ``encoder.bias [n]``, ``W_dec [n, d]`` and
``b_dec [d]``: the layout of sparsify and of the paper's released SAEs, so either opens here and
ours open in sparsify. Checkpoints are read from safetensors only, never unpickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import sparse_ops
from .errors import SaeuronError
from .io import load_safetensors, save_safetensors, write_json

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"

# cfg.json options of sparsify / the reference code that change what the SAE computes at
# inference and that this implementation does not have; a checkpoint using one is refused.
_UNSUPPORTED_OPTIONS = {
    "activation": (lambda v: v != "topk", "only TopK activations are implemented"),
    "skip_connection": (bool, "a skip connection is not implemented"),
    "transcode": (bool, "transcoders are not SAEs of one block's output"),
    "sample_topk": (
        bool,
        "it selects the top k latents per whole image, not per token; only per-token TopK is implemented",
    ),
}
#: Below 32 bits the SAE's matmuls and sums run in float32 (weights upcast per call).
_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class SaeConfig:
    """Shape and training constants of one TopK SAE (the fields of ``cfg.json``).

    The defaults are the paper's. ``d_in`` may be left 0 in a training config: the trainer sets
    it from the hook point (``with_d_in``), which also resolves ``num_latents``.
    """

    d_in: int = 0
    """Width of an input token: the hook point's channel count C (0: not known yet)."""
    num_latents: int = 0
    """Dictionary size n; 0 means ``expansion_factor * d_in`` (resolved once d_in is known)."""
    expansion_factor: int = 16
    """n / d_in when ``num_latents`` is 0 (the paper: 16). When ``num_latents`` is given and a
    multiple of d_in, it is set to their ratio so that cfg.json says what was built."""
    k: int = 32
    """Non-zero latents per token (the paper: 32)."""
    normalize_decoder: bool = True
    """Keep decoder rows at unit norm (renormalised after every optimiser step)."""
    dead_feature_threshold: int = 10_000_000
    """Tokens without firing after which a latent counts as dead and joins the AuxK loss (the
    paper: 10M)."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK loss next to the FVU."""
    input_unit_norm: bool = False
    """Standardise each token (minus its channel mean, divided by its channel std + 1e-5) before
    encoding and undo it after decoding: an option of the paper's reference code, honoured at
    inference (encode, decode, interventions); training with it is not implemented."""
    batch_topk: bool = False
    """Recorded from the reference code: trained with BatchTopK (top k*N over a batch). Inference
    here is per-token TopK either way, as the reference code's inference is."""
    multi_topk: bool = False
    """Recorded from sparsify / the reference code: trained with the Multi-TopK loss (a training
    objective only; inference is plain per-token TopK)."""

    def __post_init__(self):
        if not isinstance(self.d_in, int) or self.d_in < 0:
            raise SaeuronError(f"d_in must be a positive integer, got {self.d_in!r}")
        if (
            not isinstance(self.num_latents, int)
            or self.num_latents < 0
            or not isinstance(self.expansion_factor, int)
            or self.expansion_factor < 1
        ):
            raise SaeuronError(
                f"num_latents must be >= 0 and expansion_factor >= 1, got {self.num_latents} and "
                f"{self.expansion_factor}"
            )
        if self.d_in:
            if self.num_latents == 0:
                object.__setattr__(self, "num_latents", self.d_in * self.expansion_factor)
            elif self.num_latents % self.d_in == 0:
                object.__setattr__(self, "expansion_factor", self.num_latents // self.d_in)
        if self.k < 1 or (self.num_latents and self.k > self.num_latents):
            raise SaeuronError(f"k must be in [1, num_latents={self.num_latents}], got {self.k}")
        if self.dead_feature_threshold < 1:
            raise SaeuronError(f"dead_feature_threshold must be >= 1, got {self.dead_feature_threshold}")
        if self.auxk_alpha < 0:
            raise SaeuronError(f"auxk_alpha must be >= 0, got {self.auxk_alpha}")

    def with_d_in(self, d_in: int) -> "SaeConfig":
        """This config for inputs of width ``d_in`` (num_latents resolved from expansion_factor if unset)."""
        if self.d_in and self.d_in != d_in:
            raise SaeuronError(f"the SAE config is for d_in={self.d_in}, but the inputs have {d_in} channels")
        return replace(self, d_in=d_in)

    def inference_topk(self) -> str:
        """Which TopK encodes tokens at inference, and what the checkpoint was trained with."""
        trained = "BatchTopK" if self.batch_topk else "per-token TopK"
        extra = ", Multi-TopK loss" if self.multi_topk else ""
        norm = ", inputs standardised per token (input_unit_norm)" if self.input_unit_norm else ""
        return f"per-token TopK, k={self.k} (trained with {trained}{extra}){norm}"


class EncoderOutput(NamedTuple):
    top_acts: Tensor
    """[..., k] activations of the selected latents (0 where fewer than k are positive)."""
    top_indices: Tensor
    """[..., k] their latent ids."""


class ForwardOutput(NamedTuple):
    sae_out: Tensor
    """[N, d] reconstruction x_hat."""
    latent_acts: Tensor
    """[N, k] top-k activations."""
    latent_indices: Tensor
    """[N, k] top-k latent ids."""
    fvu: Tensor
    """Fraction of variance unexplained, ||x_hat - x||^2 / ||x - mean_batch(x)||^2."""
    auxk_loss: Tensor
    """AuxK loss (0 when no latent is dead)."""


class TopKSae(nn.Module):
    """A TopK sparse autoencoder over d_in-dimensional tokens::

        pre   = ReLU(W_enc (x - b_dec) + b_enc)      # [n_latents]
        z     = TopK(pre, k)                          # k non-zeros per token
        x_hat = z @ W_dec + b_dec

    ``W_enc``/``b_enc`` are ``encoder.weight``/``encoder.bias``. TopK is taken per token both in
    training and at inference. (The reference code trained with BatchTopK, the top k*N over a
    batch, but inferred with per-token TopK; that mismatch is avoided here.)

    Codes stay sparse: ``encode`` returns the k (value, index) pairs per token and ``decode``
    sums the k selected decoder rows, never building a dense [n_latents] code.
    """

    def __init__(self, cfg: SaeConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
        super().__init__()
        if cfg.d_in < 1:
            raise SaeuronError("the SAE config has no d_in; set it with cfg.with_d_in(channels)")
        self.cfg = cfg
        self.encoder = nn.Linear(cfg.d_in, cfg.num_latents, device=device, dtype=dtype)
        self.encoder.bias.data.zero_()
        self.W_dec = nn.Parameter(self.encoder.weight.data.clone())
        if cfg.normalize_decoder and self.W_dec.device.type != "meta":  # meta (``load``): no values, and the
            self.set_decoder_norm_to_unit_norm()  # norm would import torch's Python reference kernels (1-3 s)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, device=device, dtype=dtype))
        self.sparse_impl: str | None = None
        """Sparse products of training (``sparse_ops``: cpu, gather, triton); None: chosen by device."""

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def num_latents(self) -> int:
        return self.cfg.num_latents

    @property
    def device(self) -> torch.device:
        return self.encoder.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.weight.dtype

    @property
    def sparse_ops(self) -> sparse_ops.SparseOps:
        """The sparse decode / encoder backward that training uses (see ``sparse_ops.select``)."""
        if self.sparse_impl is not None:
            return sparse_ops.get(self.sparse_impl)
        return sparse_ops.select(self.device, self.num_latents)

    @property
    def compute_dtype(self) -> torch.dtype:
        """Precision of the SAE's arithmetic: float32 for 16-bit weights (sums over thousands of
        channels lose too much in half precision), else the weights' own."""
        return torch.float32 if self.dtype in _HALF else self.dtype

    def _input(self, x: Tensor) -> Tensor:
        """Tokens on the SAE's device in its compute precision, standardised if the config says so."""
        self._check_width(x)
        x = x.to(device=self.device, dtype=self.compute_dtype)
        return _standardise(x)[0] if self.cfg.input_unit_norm else x

    def token_scale(self, x: Tensor) -> Tensor | None:
        """Per-token std (+1e-5) [..., 1] that maps decoded directions back to the block's units
        when ``input_unit_norm`` is on; None otherwise (directions are already in those units)."""
        if not self.cfg.input_unit_norm:
            return None
        return _standardise(x.to(device=self.device, dtype=self.compute_dtype))[2]

    def _pre(self, x: Tensor) -> Tensor:
        cd = self.compute_dtype
        return F.linear(self._input(x) - self.b_dec.to(cd), self.encoder.weight.to(cd), self.encoder.bias.to(cd))

    # ------------------------------------------------------------------ computation
    def pre_acts(self, x: Tensor) -> Tensor:
        """ReLU(W_enc (x - b_dec) + b_enc) for tokens x [..., d_in]: dense [..., n_latents]
        (in ``compute_dtype``, on the SAE's device)."""
        return F.relu(self._pre(x))

    def encode(self, x: Tensor) -> EncoderOutput:
        """The k largest pre-activations of each token x [..., d_in] and their latent ids
        (per-token TopK; values in ``compute_dtype``, on the SAE's device)."""
        # TopK before ReLU: the same result (ReLU is monotone) without a pass over all latents.
        top_pre, top_indices = self._pre(x).topk(self.cfg.k, dim=-1, sorted=False)
        return EncoderOutput(F.relu(top_pre), top_indices)

    def decode(self, top_acts: Tensor, top_indices: Tensor, x: Tensor | None = None) -> Tensor:
        """x_hat [..., d_in] = sum of top_acts-weighted W_dec rows + b_dec (a sparse gather).

        With ``input_unit_norm`` the result is in standardised units unless the tokens ``x``
        that were encoded are given, whose mean and std it is then mapped back with."""
        lead = top_acts.shape[:-1]
        cd = self.compute_dtype
        summed = _weighted_row_sum(
            self.W_dec.to(cd),
            top_indices.reshape(-1, top_indices.shape[-1]),
            top_acts.reshape(-1, top_acts.shape[-1]).to(cd),
        )
        out = summed.reshape(*lead, self.d_in) + self.b_dec.to(cd)
        if self.cfg.input_unit_norm and x is not None:
            _, mean, std = _standardise(x.to(device=self.device, dtype=cd))
            out = out * std + mean
        return out

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> ForwardOutput:
        """Reconstruct tokens x [N, d_in] (leading dims are flattened) with FVU and AuxK losses.

        The arithmetic runs in ``compute_dtype`` (float32 for 16-bit weights; under
        ``torch.autocast`` the encoder matmul in the autocast dtype), the sparse products by
        ``sparse_ops`` (chosen by device)."""
        self._check_width(x)
        if self.cfg.input_unit_norm:
            raise SaeuronError("training an SAE with input_unit_norm is not implemented (inference with one is)")
        cd, ops = self.compute_dtype, self.sparse_ops
        x = x.reshape(-1, x.shape[-1]).to(device=self.device, dtype=cd)
        b_dec, W_dec = self.b_dec.to(cd), self.W_dec.to(cd)
        num_dead = int(dead_mask.sum()) if dead_mask is not None else 0
        k_aux = min(self.d_in // 2, num_dead)
        top_acts, top_indices, aux_acts, aux_indices = _SparseTopKEncoder.apply(
            x - b_dec,
            self.encoder.weight.to(cd),
            self.encoder.bias.to(cd),
            self.cfg.k,
            dead_mask if k_aux else None,
            k_aux,
            ops,
        )
        sae_out = ops.decode(top_indices, top_acts.to(cd), W_dec) + b_dec
        residual = x - sae_out
        total_variance = (x - x.mean(0)).pow(2).sum()
        fvu = residual.pow(2).sum() / total_variance
        auxk_loss = self._auxk_loss(aux_acts, aux_indices, num_dead, residual, total_variance, W_dec, ops)
        return ForwardOutput(sae_out, top_acts, top_indices, fvu, auxk_loss)

    def _auxk_loss(
        self,
        aux_acts: Tensor,
        aux_indices: Tensor,
        num_dead: int,
        residual: Tensor,
        total_variance: Tensor,
        W_dec: Tensor,
        ops,
    ) -> Tensor:
        """Dead latents' reconstruction of the residual, as in sparsify (Gao et al., App. B.1)."""
        if num_dead == 0:
            return residual.new_tensor(0.0)
        scale = min(num_dead / (self.d_in // 2), 1.0)  # fewer dead latents than k_aux: a smaller loss
        # The residual already accounts for b_dec, so the dead latents' rows are summed without it.
        residual_hat = ops.decode(aux_indices, aux_acts.to(W_dec.dtype), W_dec)
        return scale * (residual_hat - residual.detach()).pow(2).sum() / total_variance

    def dense_codes(self, top_acts: Tensor, top_indices: Tensor) -> Tensor:
        """The dense code z [..., n_latents]; for tests and statistics only, not the hot path."""
        dense = top_acts.new_zeros(*top_acts.shape[:-1], self.num_latents)
        return dense.scatter(-1, top_indices, top_acts)

    def _check_width(self, x: Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise SaeuronError(f"SAE input has {x.shape[-1]} channels but the SAE's d_in is {self.d_in}")

    # ------------------------------------------------------------------ training helpers
    @torch.no_grad()
    def init_b_dec_geometric_median(self, x: Tensor, max_iter: int = 100, tol: float = 1e-5) -> None:
        """Set b_dec to the geometric median of tokens x [N, d_in] (Weiszfeld's algorithm)."""
        points = x.reshape(-1, self.d_in).to(torch.float32)
        median = points.mean(0)
        for _ in range(max_iter):
            # Clamping keeps a point that coincides with the estimate from taking infinite weight.
            weights = 1.0 / (points - median).norm(dim=1).clamp_min(1e-8)
            updated = (weights[:, None] * points).sum(0) / weights.sum()
            converged = (updated - median).norm() < tol * (1 + median.norm())
            median = updated
            if converged:
                break
        self.b_dec.data.copy_(median.to(self.dtype))

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        """Rescale every decoder row to unit L2 norm."""
        eps = torch.finfo(self.W_dec.dtype).eps
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True) + eps

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project out of W_dec.grad each row's component along that decoder row.

        With unit-norm rows, the update then cannot change a row's norm to first order, so the
        renormalisation after the step does not fight the optimiser.
        """
        if self.W_dec.grad is None:
            raise SaeuronError("W_dec has no gradient; call backward() first")
        rows = self.W_dec.data
        along = (self.W_dec.grad * rows).sum(1, keepdim=True) / rows.pow(2).sum(1, keepdim=True).clamp_min(1e-12)
        self.W_dec.grad -= along * rows

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> None:
        """Write ``cfg.json`` and ``sae.safetensors`` into ``folder``, each file atomically."""
        folder = Path(folder)
        tensors = {
            "encoder.weight": self.encoder.weight,
            "encoder.bias": self.encoder.bias,
            "W_dec": self.W_dec,
            "b_dec": self.b_dec,
        }
        save_safetensors(tensors, folder / WEIGHTS_FILE)
        write_json(folder / CONFIG_FILE, asdict(self.cfg))

    @classmethod
    def load(
        cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> "TopKSae":
        """Open a ``cfg.json`` + ``sae.safetensors`` folder (ours, sparsify's or the paper's).

        ``dtype`` None keeps the stored precision.
        """
        folder = Path(folder)
        cfg = _read_config(folder / CONFIG_FILE)
        tensors = load_safetensors(folder / WEIGHTS_FILE)
        _check_tensors(tensors, cfg, folder / WEIGHTS_FILE)
        sae = cls(cfg, device="meta")
        sae.encoder.weight = nn.Parameter(tensors["encoder.weight"])
        sae.encoder.bias = nn.Parameter(tensors["encoder.bias"])
        sae.W_dec = nn.Parameter(tensors["W_dec"])
        sae.b_dec = nn.Parameter(tensors["b_dec"])
        return sae.to(device=device, dtype=dtype or tensors["W_dec"].dtype)


def load_many(
    root: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> dict[str, TopKSae]:
    """Every SAE under ``root`` (a folder or a hub id, see ``hub``), keyed by its hook point:
    the subfolder name without the paper's ``unet.`` prefix; sorted by name."""
    from .hub import folder_points, resolve_sae_dir

    root = resolve_sae_dir(root)
    folders = folder_points(root)
    if not folders:
        raise SaeuronError(f"{root} holds no SAE (no subfolder with {CONFIG_FILE})")
    return {point: TopKSae.load(f, device=device, dtype=dtype) for point, f in folders.items()}


class _SparseTopKEncoder(torch.autograd.Function):
    """ReLU(x W^T + b) -> per-token TopK (and the AuxK top among dead latents), with a backward
    pass that touches only the selected latents: N*(k + k_aux) rows instead of N*n_latents,
    computed by ``ops`` (``sparse_ops``: the implementation for the device).

    Unlike sparsify's fused encoder, the AuxK selection also sends its gradient into the encoder.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, k: int, dead_mask, k_aux: int, ops):
        pre = F.linear(x, weight, bias)
        top_pre, top_indices = pre.topk(k, dim=-1, sorted=False)
        if k_aux:
            aux_pre, aux_indices = pre.masked_fill(~dead_mask[None], -torch.inf).topk(k_aux, dim=-1, sorted=False)
        else:
            aux_pre = pre.new_zeros(pre.shape[0], 0)
            aux_indices = top_indices.new_zeros(pre.shape[0], 0)
        top_acts, aux_acts = F.relu(top_pre), F.relu(aux_pre)
        ctx.save_for_backward(x, weight, torch.cat([top_indices, aux_indices], 1), torch.cat([top_acts, aux_acts], 1))
        ctx.k, ctx.ops = k, ops
        return top_acts, top_indices, aux_acts, aux_indices

    @staticmethod
    def backward(ctx, grad_top, _grad_top_indices, grad_aux, _grad_aux_indices):
        x, weight, indices, acts = ctx.saved_tensors
        widths = (ctx.k, indices.shape[1] - ctx.k)
        parts = [g if g is not None else acts.new_zeros(acts.shape[0], w) for g, w in zip((grad_top, grad_aux), widths)]
        # float32 (the weights' precision) even when autocast ran the forward matmul in bfloat16
        grad = torch.cat([p.to(weight.dtype) for p in parts], 1) * (
            acts > 0
        )  # ReLU: no gradient where the latent is off
        grad_x, grad_w, grad_b = ctx.ops.encoder_grads(x, weight, indices, grad)
        return grad_x.to(x.dtype), grad_w, grad_b, None, None, None, None


def _standardise(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(x - mean) / (std + 1e-5) per token over channels, with the mean and std + 1e-5 (the
    reference code's ``input_unit_norm``)."""
    mean = x.mean(dim=-1, keepdim=True)
    centred = x - mean
    std = centred.std(dim=-1, keepdim=True) + 1e-5
    return centred / std, mean, std


def _weighted_row_sum(rows: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
    """sum_j weights[:, j] * rows[indices[:, j]] for 2-D indices/weights, without a dense code."""
    return F.embedding_bag(indices, rows, per_sample_weights=weights.to(rows.dtype), mode="sum")


def _read_config(path: Path) -> SaeConfig:
    if not path.is_file():
        raise SaeuronError(f"no such file: {path}")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SaeuronError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict) or "d_in" not in raw:
        raise SaeuronError(f"{path} is not an SAE config (no d_in)")
    if "k" not in raw:
        # A silent default would change which latents fire; the paper's and sparsify's files say k.
        raise SaeuronError(f'{path} does not say k (latents per token); add "k" to cfg.json')
    for option, (unsupported, why) in _UNSUPPORTED_OPTIONS.items():
        if option in raw and unsupported(raw[option]):
            raise SaeuronError(f"{path}: {option}={raw[option]!r} is not supported: {why}")
    # Other unknown fields (training options of sparsify or the reference code) do not change
    # inference; like sparsify, drop them.
    known = {f.name for f in fields(SaeConfig)}
    try:
        return SaeConfig(**{k: v for k, v in raw.items() if k in known})
    except TypeError as e:
        raise SaeuronError(f"{path} has a malformed field ({e})") from None


def _check_tensors(tensors: dict[str, Tensor], cfg: SaeConfig, path: Path) -> None:
    n, d = cfg.num_latents, cfg.d_in
    expected = {"encoder.weight": (n, d), "encoder.bias": (n,), "W_dec": (n, d), "b_dec": (d,)}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise SaeuronError(f"{path}: missing tensors {missing}, unexpected tensors {extra}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise SaeuronError(
                f"{path}: {name} has shape {tuple(tensors[name].shape)}, but cfg.json (d_in={d}, num_latents={n}) "
                f"needs {shape}"
            )
