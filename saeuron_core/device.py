"""Where and in what precision the model runs: ``--device`` and ``--dtype`` resolved once.

``resolve_device("auto")`` is CUDA when torch sees one, else Apple's MPS, else the CPU; a named
device that is not there is one clear error (not a traceback from deep inside torch).
``resolve_dtype("auto", device)`` is float16 on CUDA and float32 elsewhere. float16 on the CPU
is probed once with the ops a U-Net needs; where the build lacks one, float32 is used with a
warning. SAEs stay in float32 whatever the model's precision (see ``sae``): half-precision
activations are encoded and edited in float32 and only the result is cast back.

For SAE training and statistics: ``process_device`` is this process's device under torchrun
(each rank its own GPU), ``tf32`` a scope that lets float32 matmuls use TensorFloat-32, and
``prefetch_to`` streams CPU batches to a device one batch ahead (pinned memory on CUDA).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import warnings
from functools import lru_cache
from typing import Iterable, Iterator

import torch

from .errors import SaeuronError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(spec: str | torch.device | None = "auto", flag: str = "--device") -> torch.device:
    """The torch device ``spec`` names ("auto" / None: CUDA, else MPS, else CPU), or a clear error
    naming the command-line ``flag`` that gave it."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = _CUDA.match(spec)
    if match:
        if not torch.cuda.is_available():
            build = (
                f"torch {torch.__version__} was built without CUDA"
                if torch.version.cuda is None
                else "torch sees no CUDA device (driver or CUDA_VISIBLE_DEVICES?)"
            )
            raise SaeuronError(f"{flag} {spec}: {build}; use {flag} cpu (or auto)")
        index = int(match.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise SaeuronError(
                f"{flag} {spec}: only {torch.cuda.device_count()} CUDA device(s) (cuda:0 ... "
                f"cuda:{torch.cuda.device_count() - 1})"
            )
        return torch.device("cuda", index)
    if spec == "mps":
        if not _mps_available():
            raise SaeuronError(f"{flag} mps: torch reports no Apple MPS device here; use {flag} cpu (or auto)")
        return torch.device("mps")
    raise SaeuronError(f"unknown device {spec!r}; use {DEVICE_CHOICES}")


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The model's precision: ``name`` (float32 / float16 / bfloat16, "auto" / None: float16 on
    CUDA, float32 elsewhere), falling back to float32 with a warning where ``device`` cannot run it."""
    if isinstance(name, torch.dtype):
        dtype = name
    else:
        key = (name or "auto").strip().lower()
        key = DTYPE_ALIASES.get(key, key)
        if key == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        if key not in DTYPES:
            raise SaeuronError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
        dtype = DTYPES[key]
    if dtype not in DTYPES.values():
        raise SaeuronError(f"unsupported dtype {dtype}; use {', '.join(DTYPES)}")
    if dtype != torch.float32 and not _runs_unet_ops(device.type, dtype):
        warnings.warn(
            f"{dtype_name(dtype)} is not supported on {device.type} by this torch build; using float32", stacklevel=2
        )
        return torch.float32
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@lru_cache(maxsize=None)
def _runs_unet_ops(device_type: str, dtype: torch.dtype) -> bool:
    """Whether the ops of a diffusers U-Net / VAE step run in ``dtype`` on ``device_type``."""
    if device_type != "cpu":
        return True  # CUDA and MPS run half precision natively
    try:
        x = torch.randn(1, 4, 8, 8).to(dtype)
        conv = torch.nn.Conv2d(4, 8, 3, padding=1).to(dtype)
        y = torch.nn.functional.group_norm(conv(x), 2)
        y = torch.nn.functional.silu(y)
        attn = torch.nn.functional.scaled_dot_product_attention(*(y.flatten(2).transpose(1, 2)[None],) * 3)
        torch.nn.functional.interpolate(attn.reshape(1, 8, 8, 8), scale_factor=2.0, mode="nearest")
        torch.nn.functional.linear(y.flatten(2).transpose(1, 2), torch.randn(8, 8).to(dtype)).softmax(-1)
        return True
    except (RuntimeError, NotImplementedError):
        return False


def explain_dtype_failure(error: BaseException, device: torch.device | str, dtype: torch.dtype) -> SaeuronError | None:
    """A one-line error for an op the device lacks in ``dtype`` (e.g. "not implemented for 'Half'")."""
    text = str(error)
    if "not implemented for" in text and ("Half" in text or "BFloat16" in text):
        op = text.strip().splitlines()[0]
        return SaeuronError(
            f"{dtype_name(dtype)} is not supported on {device} by an op of this model ({op}); use --dtype float32"
        )
    return None


def process_device(spec: str | torch.device | None = "auto", flag: str = "--device") -> torch.device:
    """``resolve_device(spec)`` for this process: under torchrun an "auto" or "cuda" without an
    index is the rank's own GPU, cuda:(LOCAL_RANK mod the visible devices), so ranks (and the hook
    points of ``train-sae --by-point``) spread over the GPUs; a named cuda:N is kept."""
    device = resolve_device(spec, flag)
    named_index = device.type == "cuda" and ":" in str(spec)
    if device.type == "cuda" and not named_index and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return device


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """Within the scope, float32 matmuls on CUDA may use TensorFloat-32 (``enabled``); the
    previous setting is restored afterwards. No effect off CUDA."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def prefetch_to(batches: Iterable, device: torch.device, depth: int = 1) -> Iterator:
    """``batches`` (tensors, or tuples of tensors) on ``device``, each prepared while the
    previous one is in use.

    On the CPU the batches pass through unchanged (no thread: it would compete with the step for
    the same cores). Elsewhere a background thread reads the next ``depth`` batches from the store
    (disk, shuffling), pins them (CUDA) and copies them on a side stream; errors reach the caller,
    and closing the generator stops the thread.
    """
    device = torch.device(device)
    if device.type == "cpu":
        yield from batches
        return
    cuda = device.type == "cuda"
    if cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    stream = torch.cuda.Stream(device) if cuda else None
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for x in batches:
                if cuda:
                    with torch.cuda.stream(stream):
                        x = _map(x, lambda t: t if t.device == device else t.pin_memory().to(device, non_blocking=True))
                    stream.synchronize()  # this thread waits; the training stream does not
                else:
                    x = _map(x, lambda t: t.to(device))
                if not put(x):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    thread = threading.Thread(target=work, name="saeuron-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            x = ready.get()
            if x is done:
                return
            if isinstance(x, BaseException):
                raise x
            if cuda:  # allocated on the side stream, used on the current one
                _map(x, lambda t: t.record_stream(torch.cuda.current_stream(device)))
            yield x
    finally:
        stop.set()
        thread.join(timeout=10)


def _map(x, f):
    return tuple(f(t) for t in x) if isinstance(x, tuple) else f(x)
