"""Hooks on a diffusers ``UNet2DConditionModel``: capture and edit block outputs, step-aware.

Every hook lives in a context manager that removes it in ``finally`` (exceptions and
KeyboardInterrupt included), and every hook has a name that is unique per U-Net while it lives.

Hook points are dotted module paths relative to the U-Net ("up_blocks.1.attentions.1"; a
leading "unet." is accepted). The tensor seen and edited is the block OUTPUT [B, C, H, W]; a
block may return it bare, as the first element of a tuple (what ``Transformer2DModel`` returns
inside the U-Net in diffusers 0.42, called with ``return_dict=False``) or as ``.sample`` of an
output object (``return_dict=True``). Maps need not be square.

Time: a forward pre-hook on the U-Net reads the ``timestep`` argument of every call (tensor or
number). The *step index* is the pipeline's loop index, 0 for the first denoising step of the
current generation; how it is known depends on what the hooks are given:

- ``scheduler`` (the pipeline's; ``SaeBundle.hooked`` always passes it): counted from the
  scheduler itself. While the hooks live, ``scheduler.set_timesteps`` (a new generation) sets the
  index to 0 and every ``scheduler.step`` adds 1; U-Net calls between two ``step`` calls share an
  index. This follows any scheduler: Heun's two evaluations per step, DPM-Solver++ with Karras
  sigmas (whose rounded timesteps may repeat), Euler Ancestral, and back-to-back generations
  that start where the last one ended. Both methods are restored in ``finally``.
- no scheduler: the rank of the call's timestep among the distinct timesteps of the current
  generation, in the order they arrive. Calls at one timestep (CFG as separate calls) share an
  index; a timestep at least as large as the generation's first starts a new generation at 0.
  Limits: a scheduler that evaluates the U-Net twice at one timestep per step (Heun) or whose
  timesteps repeat is tracked by distinct values, not steps; a new generation that starts below
  where the last one started cannot be told from a timestep going back up inside one, and is
  refused with a ``SaeuronError`` (pass the scheduler).

Classifier-free guidance: diffusers' ``StableDiffusionPipeline`` runs the U-Net once per step on
the batch ``[uncond, cond]`` (first half unconditional) when ``guidance_scale > 1``. With
``cfg=True`` (the default) the halves are addressable as ``"uncond"``, ``"cond"`` or ``"both"``;
with ``cfg=False`` (guidance off: the whole batch is conditional) only ``"cond"`` and ``"both"``
make sense and both mean the whole batch.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
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
    raise SaeuronError(
        f"hook point {point!r} does not exist in this U-Net{hint}; attention blocks: {', '.join(blocks) or 'none'}"
    )


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
    """Tracks the current ``Step``: from the scheduler's own calls when ``follow(scheduler)`` is
    active, else from the timesteps of successive U-Net calls (see the module docstring)."""

    current: Step | None = None
    timesteps: list = field(default_factory=list)
    """Timesteps of the current generation, one per step, in step order."""
    counted: bool = False
    """True while the step index is counted from a scheduler (``follow``)."""
    index: int = 0
    """The step index counted from the scheduler."""

    def observe(self, timestep: int | float) -> Step:
        if self.counted:
            if len(self.timesteps) <= self.index:
                self.timesteps.append(timestep)  # the step's first U-Net call
        elif self.current is None or (timestep > self.current.timestep and timestep >= self.timesteps[0]):
            self.timesteps = [timestep]  # first call, or a new generation
        elif timestep > self.current.timestep:
            raise SaeuronError(
                f"the U-Net's timestep went up from {self.current.timestep} to {timestep} inside a generation "
                f"that started at {self.timesteps[0]}: the timestep alone cannot tell a new generation from this "
                "scheduler's order; give the hooks the pipeline's scheduler (scheduler=pipe.scheduler, as "
                "SaeBundle.hooked does)"
            )
        elif timestep < self.current.timestep:
            self.timesteps.append(timestep)
        index = self.index if self.counted else len(self.timesteps) - 1
        self.current = Step(timestep, index)
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

    def _start_generation(self) -> None:
        self.index, self.timesteps, self.current = 0, [], None

    def _advance(self) -> None:
        self.index += 1

    @contextlib.contextmanager
    def follow(self, scheduler) -> Iterator["StepClock"]:
        """Count steps from ``scheduler``: ``set_timesteps`` starts a generation (index 0), each
        ``step`` ends one step (index + 1). Both are wrapped on the instance and restored in
        ``finally``, also when other clocks wrapped them too (contexts nest)."""
        if not (callable(getattr(scheduler, "set_timesteps", None)) and callable(getattr(scheduler, "step", None))):
            raise SaeuronError(f"{type(scheduler).__name__} is not a diffusers scheduler (no set_timesteps / step)")
        own = {name: scheduler.__dict__[name] for name in ("set_timesteps", "step") if name in scheduler.__dict__}
        set_timesteps, step = scheduler.set_timesteps, scheduler.step

        @functools.wraps(set_timesteps)  # keeps the signature diffusers inspects
        def counted_set_timesteps(*args, **kwargs):
            out = set_timesteps(*args, **kwargs)
            self._start_generation()
            return out

        @functools.wraps(step)
        def counted_step(*args, **kwargs):
            out = step(*args, **kwargs)
            self._advance()
            return out

        scheduler.set_timesteps, scheduler.step = counted_set_timesteps, counted_step
        self.counted = True
        try:
            yield self
        finally:
            self.counted = False
            for name in ("set_timesteps", "step"):
                if name in own:
                    setattr(scheduler, name, own[name])
                else:
                    scheduler.__dict__.pop(name, None)


# --------------------------------------------------------------------------- registry
class HookSet:
    """Named hooks on one U-Net; ``close()`` (or leaving the ``with`` block) removes them all.

    A name may be alive only once per U-Net, across all hook sets: registering it twice raises.
    """

    def __init__(self, unet: nn.Module):
        self.unet = unet
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {}

    def forward_hook(self, name: str, module: nn.Module, fn: Callable, with_kwargs: bool = False) -> None:
        """``fn(module, args[, kwargs], output)``; a non-None return value replaces the output."""
        self._add(name, lambda: module.register_forward_hook(fn, with_kwargs=with_kwargs))

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


def _start_clock(hooks: HookSet, name: str, clock: StepClock, stack: contextlib.ExitStack, scheduler) -> None:
    # Registered after the block hooks, so a clash of names is reported with the block's name.
    hooks.forward_pre_hook(f"{name}/clock", hooks.unet, clock.read_unet_call, with_kwargs=True)
    if scheduler is not None:
        stack.enter_context(clock.follow(scheduler))


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
        raise SaeuronError(
            f"a batch of {batch} cannot be split into [uncond, cond] halves; pass cfg=False when guidance is off"
        )
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
    scheduler=None,
) -> Iterator[ActivationRecorder]:
    """Record every output of each hook point, with its timestep and step index.

    ``dtype`` (e.g. torch.float16) and ``device`` set how copies are stored (None: unchanged).
    A capture registered after an edit of the same point records the edited output.
    ``scheduler``: the pipeline's, to count steps from it (see the module docstring).
    """
    points = [points] if isinstance(points, str) else list(points)
    _check_halves(halves, cfg)
    recorder = ActivationRecorder([normalize_point(p) for p in points])
    clock = StepClock()
    with HookSet(unet) as hooks, contextlib.ExitStack() as stack:
        for point in recorder.records:
            module = resolve_point(unet, point)
            hooks.forward_hook(
                f"{name}:{point}", module, _recording_hook(recorder.records[point], clock, halves, cfg, dtype, device)
            )
        _start_clock(hooks, name, clock, stack, scheduler)
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
    scheduler=None,
) -> Iterator[None]:
    """Replace the output map x [B', C, H, W] of ``point`` by ``fn(x, step)`` on every call.

    ``fn`` sees only the addressed CFG half; the other half passes through. When ``fn`` returns
    its input object the block output is returned untouched (the same object).
    ``scheduler``: the pipeline's, to count steps from it (see the module docstring).
    """
    _check_halves(halves, cfg)
    point = normalize_point(point)
    name = name or f"edit:{point}"
    clock = StepClock()
    with HookSet(unet) as hooks, contextlib.ExitStack() as stack:
        hooks.forward_hook(name, resolve_point(unet, point), _editing_hook(fn, clock, halves, cfg))
        _start_clock(hooks, name, clock, stack, scheduler)
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
            raise SaeuronError(
                f"a block edit returned shape {tuple(edited.shape)} for a map of shape {tuple(part.shape)}"
            )
        if rows != slice(0, tensor.shape[0]):
            kept = tensor[: rows.start] if rows.start else tensor[rows.stop :]
            edited = torch.cat([kept, edited] if rows.start else [edited, kept])
        return _replace_block_tensor(output, edited)

    return edit
