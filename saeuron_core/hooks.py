"""Hooks on a diffusers ``UNet2DConditionModel``: capture and edit block outputs, step-aware.

Every hook lives in a context manager that removes it in ``finally`` (exceptions and
KeyboardInterrupt included), and every hook has a name that is unique per U-Net while it lives.

Hook points are dotted module paths relative to the U-Net ("up_blocks.1.attentions.1"; a
leading "unet." is accepted). The tensor seen and edited is the block OUTPUT [B, C, H, W]; a
block may return it bare, as the first element of a tuple (what ``Transformer2DModel`` returns
inside the U-Net in diffusers 0.42, called with ``return_dict=False``) or as ``.sample`` of an
output object (``return_dict=True``). Maps need not be square.

Time: a forward pre-hook on the U-Net reads the ``timestep`` argument of every call (tensor or
number); nothing counts calls. The *step index* is the rank of that timestep among the distinct
timesteps of the current generation, in the order they arrive: 0 for the first denoising step.
Calling the U-Net several times at one step (CFG as separate calls, guidance variants) keeps the
index; a timestep larger than the previous one starts a new generation at index 0 (denoising
timesteps only decrease within a generation), so one context can span many pipeline calls.

Classifier-free guidance: diffusers' ``StableDiffusionPipeline`` runs the U-Net once per step on
the batch ``[uncond, cond]`` (first half unconditional) when ``guidance_scale > 1``. With
``cfg=True`` (the default) the halves are addressable as ``"uncond"``, ``"cond"`` or ``"both"``;
with ``cfg=False`` (guidance off: the whole batch is conditional) only ``"cond"`` and ``"both"``
make sense and both mean the whole batch.
"""

from __future__ import annotations

import contextlib
import difflib
import numbers
import weakref
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Literal, NamedTuple

import torch
from torch import Tensor, nn

from .errors import SaeuronError

Halves = Literal["cond", "uncond", "both"]
HALVES = ("cond", "uncond", "both")

# Names of the hooks alive on each U-Net; weak keys so a dropped model takes its entry with it.
_LIVE_NAMES: "weakref.WeakKeyDictionary[nn.Module, set[str]]" = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------- tokens
def to_tokens(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, H*W, C]; token index = h * W + w."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def from_tokens(tokens: Tensor, height: int, width: int) -> Tensor:
    """[B, H*W, C] -> contiguous [B, C, H, W], the inverse of ``to_tokens``."""
    b, hw, c = tokens.shape
    if hw != height * width:
        raise SaeuronError(f"{hw} tokens do not form a {height}x{width} map")
    return tokens.reshape(b, height, width, c).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- hook points
def resolve_point(unet: nn.Module, point: str) -> nn.Module:
    """The module at dotted path ``point`` (leading "unet." allowed), or an error naming options."""
    path = normalize_point(point)
    try:
        return unet.get_submodule(path)
    except AttributeError:
        pass
    names = [n for n, _ in unet.named_modules() if n]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.6)
    blocks = [n for n, m in unet.named_modules() if type(m).__name__ == "Transformer2DModel"]
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise SaeuronError(f"hook point {point!r} does not exist in this U-Net{hint}; attention blocks: {', '.join(blocks) or 'none'}")


def block_channels(unet: nn.Module, point: str) -> int | None:
    """Channels C of ``point``'s output map, read from the block's config before anything runs
    (Transformer2DModel: out_channels or in_channels; ResNet blocks: out_channels); None when
    the block does not say."""
    module = resolve_point(unet, point)
    config = getattr(module, "config", None)
    if config is not None:
        for key in ("out_channels", "in_channels"):
            value = config.get(key) if hasattr(config, "get") else getattr(config, key, None)
            if isinstance(value, int):
                return value
    value = getattr(module, "out_channels", None)
    return value if isinstance(value, int) else None


def normalize_point(point: str) -> str:
    if not isinstance(point, str) or not point.strip():
        raise SaeuronError(f"hook point must be a dotted module path, got {point!r}")
    path = point.strip().removeprefix("unet.")
    if not path:
        raise SaeuronError(f"hook point {point!r} names the whole U-Net, not a block")
    return path


def _block_tensor(output) -> Tensor:
    """The [B, C, H, W] tensor inside a block's output (bare, tuple head or ``.sample``)."""
    if isinstance(output, Tensor):
        tensor = output
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        tensor = output[0]
    elif isinstance(getattr(output, "sample", None), Tensor):
        tensor = output.sample
    else:
        raise SaeuronError(f"cannot find a tensor in a block output of type {type(output).__name__}")
    if tensor.ndim != 4:
        raise SaeuronError(f"hook points must output [B, C, H, W] maps; got shape {tuple(tensor.shape)}")
    return tensor


def _replace_block_tensor(output, tensor: Tensor):
    """``output`` with its map replaced by ``tensor``, in the same container type."""
    if isinstance(output, Tensor):
        return tensor
    if isinstance(output, (tuple, list)):
        return type(output)([tensor, *output[1:]])
    return replace(output, sample=tensor)  # diffusers' BaseOutput is a dataclass


# --------------------------------------------------------------------------- time
class Step(NamedTuple):
    """Where in the denoising trajectory a hook fires."""

    timestep: int | float
    """The scheduler timestep the U-Net was called with (e.g. 981 ... 1 for 50 DDIM steps)."""
    index: int
    """0-based denoising step of the current generation (see the module docstring)."""


def timestep_value(timestep) -> int | float:
    """One number from the U-Net's ``timestep`` argument: a number, a 0-d or a [B] tensor."""
    if isinstance(timestep, Tensor):
        flat = timestep.detach().reshape(-1)
        if flat.numel() == 0:
            raise SaeuronError("the U-Net was called with an empty timestep tensor")
        if not bool((flat == flat[0]).all()):
            raise SaeuronError("the U-Net was called with different timesteps per sample; step-aware hooks need one")
        timestep = flat[0].item()
    if not isinstance(timestep, numbers.Real):
        raise SaeuronError(f"cannot read a timestep from {type(timestep).__name__}")
    value = float(timestep)
    return int(value) if value.is_integer() else value


@dataclass
class StepClock:
    """Tracks the current ``Step`` from the timesteps of successive U-Net calls."""

    current: Step | None = None
    timesteps: list = field(default_factory=list)
    """Distinct timesteps of the current generation, in step order."""

    def observe(self, timestep: int | float) -> Step:
        if self.current is None or timestep > self.current.timestep:
            self.timesteps = [timestep]  # first call, or a new generation
        elif timestep < self.current.timestep:
            self.timesteps.append(timestep)
        self.current = Step(timestep, len(self.timesteps) - 1)
        return self.current

    def now(self) -> Step:
        if self.current is None:
            raise SaeuronError("a block hook ran outside a U-Net call, so there is no current timestep")
        return self.current

    def read_unet_call(self, _unet: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook (with kwargs) on the U-Net: observe the call's ``timestep``."""
        # UNet2DConditionModel.forward(sample, timestep, encoder_hidden_states, ...)
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if timestep is None:
            raise SaeuronError("the U-Net was called without a timestep")
        self.observe(timestep_value(timestep))


# --------------------------------------------------------------------------- registry
class HookSet:
    """Named hooks on one U-Net; ``close()`` (or leaving the ``with`` block) removes them all.

    A name may be alive only once per U-Net, across all hook sets: registering it twice raises.
    """

    def __init__(self, unet: nn.Module):
        self.unet = unet
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {}

    def forward_hook(self, name: str, module: nn.Module, fn: Callable) -> None:
        """``fn(module, args, output)``; a non-None return value replaces the output."""
        self._add(name, lambda: module.register_forward_hook(fn))

    def forward_pre_hook(self, name: str, module: nn.Module, fn: Callable, with_kwargs: bool = False) -> None:
        """``fn(module, args[, kwargs])`` before ``module`` runs."""
        self._add(name, lambda: module.register_forward_pre_hook(fn, with_kwargs=with_kwargs))

    def _add(self, name: str, register: Callable[[], torch.utils.hooks.RemovableHandle]) -> None:
        live = _LIVE_NAMES.setdefault(self.unet, set())
        if name in live:
            raise SaeuronError(f"a hook named {name!r} is already registered on this U-Net")
        self._handles[name] = register()
        live.add(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._handles)

    def close(self) -> None:
        live = _LIVE_NAMES.get(self.unet, set())
        for name, handle in self._handles.items():
            handle.remove()
            live.discard(name)
        self._handles.clear()

    def __enter__(self) -> "HookSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _start_clock(hooks: HookSet, name: str, clock: StepClock) -> None:
    # Registered after the block hooks, so a clash of names is reported with the block's name.
    hooks.forward_pre_hook(f"{name}/clock", hooks.unet, clock.read_unet_call, with_kwargs=True)


# --------------------------------------------------------------------------- CFG halves
def _check_halves(halves: str, cfg: bool) -> None:
    if halves not in HALVES:
        raise SaeuronError(f"halves must be one of {', '.join(HALVES)}, got {halves!r}")
    if halves == "uncond" and not cfg:
        raise SaeuronError('halves="uncond" needs cfg=True: without guidance there is no unconditional half')


def half_slice(batch: int, halves: Halves, cfg: bool) -> slice:
    """The rows of a U-Net batch that ``halves`` addresses under diffusers' [uncond, cond] layout."""
    if not cfg or halves == "both":
        return slice(0, batch)
    if batch % 2:
        raise SaeuronError(f"a batch of {batch} cannot be split into [uncond, cond] halves; pass cfg=False when guidance is off")
    return slice(batch // 2, batch) if halves == "cond" else slice(0, batch // 2)


# --------------------------------------------------------------------------- capture
class Record(NamedTuple):
    timestep: int | float
    step: int
    tensor: Tensor
    """[B', C, H, W] block output of the addressed half."""


class ActivationRecorder:
    """Block outputs captured per hook point, one ``Record`` per U-Net call."""

    def __init__(self, points: list[str]):
        self.records: dict[str, list[Record]] = {p: [] for p in points}

    def stacked(self, point: str) -> Tensor:
        """[T, B', C, H, W] in denoising order; needs exactly one record per step of one generation."""
        records = self._records(point)
        steps = [r.step for r in records]
        if steps != list(range(len(records))):
            raise SaeuronError(
                f"records at {point} have steps {steps}; stacking needs one U-Net call per step of a single generation"
            )
        return torch.stack([r.tensor for r in records])

    @property
    def timesteps(self) -> list:
        """Timesteps of the recorded calls at the first hook point, in order."""
        first = next(iter(self.records))
        return [r.timestep for r in self.records[first]]

    def _records(self, point: str) -> list[Record]:
        key = normalize_point(point)
        if key not in self.records:
            raise SaeuronError(f"{point!r} was not captured; captured points: {', '.join(self.records)}")
        if not self.records[key]:
            raise SaeuronError(f"nothing was captured at {point}: the U-Net did not run")
        return self.records[key]

    def clear(self) -> None:
        for records in self.records.values():
            records.clear()


@contextlib.contextmanager
def capture_activations(
    unet: nn.Module,
    points: list[str] | str,
    halves: Halves = "both",
    cfg: bool = True,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = "cpu",
    name: str = "capture",
) -> Iterator[ActivationRecorder]:
    """Record every output of each hook point, with its timestep and step index.

    ``dtype`` (e.g. torch.float16) and ``device`` set how copies are stored (None: unchanged).
    A capture registered after an edit of the same point records the edited output.
    """
    points = [points] if isinstance(points, str) else list(points)
    _check_halves(halves, cfg)
    recorder = ActivationRecorder([normalize_point(p) for p in points])
    clock = StepClock()
    with HookSet(unet) as hooks:
        for point in recorder.records:
            module = resolve_point(unet, point)
            hooks.forward_hook(f"{name}:{point}", module, _recording_hook(recorder.records[point], clock, halves, cfg, dtype, device))
        _start_clock(hooks, name, clock)
        yield recorder


def _recording_hook(records: list[Record], clock: StepClock, halves: Halves, cfg: bool, dtype, device):
    def record(_module, _args, output):
        tensor = _block_tensor(output)
        part = tensor[half_slice(tensor.shape[0], halves, cfg)]
        step = clock.now()
        # copy=True: the stored map must not alias a buffer the model may reuse.
        records.append(Record(step.timestep, step.index, part.detach().to(device=device, dtype=dtype, copy=True)))

    return record


# --------------------------------------------------------------------------- edit
BlockEdit = Callable[[Tensor, Step], Tensor]


@contextlib.contextmanager
def edit_block_output(
    unet: nn.Module,
    point: str,
    fn: BlockEdit,
    name: str | None = None,
    halves: Halves = "both",
    cfg: bool = True,
) -> Iterator[None]:
    """Replace the output map x [B', C, H, W] of ``point`` by ``fn(x, step)`` on every call.

    ``fn`` sees only the addressed CFG half; the other half passes through. When ``fn`` returns
    its input object the block output is returned untouched (the same object).
    """
    _check_halves(halves, cfg)
    point = normalize_point(point)
    name = name or f"edit:{point}"
    clock = StepClock()
    with HookSet(unet) as hooks:
        hooks.forward_hook(name, resolve_point(unet, point), _editing_hook(fn, clock, halves, cfg))
        _start_clock(hooks, name, clock)
        yield


def _editing_hook(fn: BlockEdit, clock: StepClock, halves: Halves, cfg: bool):
    def edit(_module, _args, output):
        tensor = _block_tensor(output)
        rows = half_slice(tensor.shape[0], halves, cfg)
        part = tensor[rows]
        edited = fn(part, clock.now())
        if edited is part:
            return None  # None keeps the block's own output object
        if edited.shape != part.shape:
            raise SaeuronError(f"a block edit returned shape {tuple(edited.shape)} for a map of shape {tuple(part.shape)}")
        if rows != slice(0, tensor.shape[0]):
            kept = tensor[: rows.start] if rows.start else tensor[rows.stop :]
            edited = torch.cat([kept, edited] if rows.start else [edited, kept])
        return _replace_block_tensor(output, edited)

    return edit
