"""Many processes with ``torch.distributed``, launched by ``torchrun`` (``python -m
torch.distributed.run --nproc-per-node N -m saeuron_core ...``).

``session()`` initialises the default process group from torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR / MASTER_PORT): gloo on CPU, nccl when CUDA is there. With
no such environment (a plain ``saeuron ...``) it does nothing and every helper below is the
one-process identity: rank 0 of 1, barriers return at once, reductions return their input.

Collectives run on the backend's device (CUDA for nccl, CPU for gloo); the helpers move tensors
there and back, so callers keep their tensors where they are: on the CPU, or under nccl on the
rank's own GPU (``device.process_device``: cuda:LOCAL_RANK), where no copy is made.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

from .errors import SaeuronError


def launched() -> bool:
    """True when this process was started by torchrun (or anything that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def session(backend: str | None = None, timeout_minutes: float = 60) -> Iterator[None]:
    """Join the process group for the duration of a command, if torchrun started us.

    ``backend``: None picks nccl when CUDA is available and gloo otherwise. ``timeout_minutes``
    bounds how long a collective waits for a rank that died (torchrun normally kills the others
    first).
    """
    if not launched() or dist.is_initialized():
        yield
        return
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise SaeuronError(
                f"WORLD_SIZE is set but {var} is not: launch with torchrun (python -m torch.distributed.run)"
            )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":  # each rank its own GPU (round-robin when there are more ranks than GPUs)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    try:
        yield
    finally:
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced over ranks (sum / max / min), as a new tensor on the input's device."""
    if not active():
        return tensor.clone()
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    buf = tensor.detach().to(_device(), copy=True)
    dist.all_reduce(buf, op=ops[op])
    return buf.to(tensor.device)


def all_reduce_grads(params: list[torch.Tensor]) -> None:
    """Sum every parameter's gradient over ranks, in place, in one coalesced all-reduce."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(_device())
    dist.all_reduce(flat)
    flat = flat.to(grads[0].device)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape and dtype on each), in rank order."""
    if not active():
        return [tensor]
    buf = tensor.detach().contiguous().to(_device())
    out = [torch.empty_like(buf) for _ in range(world())]
    dist.all_gather(out, buf)
    return [t.to(tensor.device) for t in out]


def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values."""
    if not active():
        return
    for t in tensors:
        buf = t.detach().to(_device(), copy=True)
        dist.broadcast(buf, src)
        t.data.copy_(buf.to(t.device))


def all_gather_object(obj) -> list:
    """Every rank's picklable ``obj``, in rank order (small things: plans, messages, file names)."""
    if not active():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def agree(value, what: str) -> None:
    """Refuse (on every rank) when ranks disagree on ``value``, e.g. a plan built from other flags."""
    values = all_gather_object(value)
    if any(v != values[0] for v in values):
        differing = [r for r, v in enumerate(values) if v != values[0]]
        raise SaeuronError(
            f"ranks disagree on {what} (ranks {differing} differ from rank 0): launch every rank with the same model, "
            "prompts and flags"
        )


def raise_together(error: str | None) -> None:
    """Raise SaeuronError on every rank when any rank has an error message (one line, rank 0's first).

    A check that only some ranks fail would otherwise leave the others waiting in a collective.
    """
    errors = all_gather_object(error)
    first = next((e for e in errors if e), None)
    if first:
        raise SaeuronError(first)


def split(n: int, r: int | None = None, w: int | None = None) -> list[int]:
    """Indices 0..n-1 of rank ``r`` of ``w``: round-robin, so neighbours spread over ranks."""
    r = rank() if r is None else r
    w = world() if w is None else w
    return list(range(r, n, w))
