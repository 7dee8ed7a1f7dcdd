"""One interface over every concept-removal method: SAeUron, ESD, UCE, and none.

"saeuron" is the project's default SAE removal (the variant its defaults table names);
"saeuron-paper" is the paper's exact method with the same table's tau / gamma. Both name their
variant in ``Removal.variant`` (they are the same removal when the table's variant is "paper").

``prepare_removal(...)`` does a method's set-up for some concepts (select SAE features; train
ESD; solve UCE) and returns a ``Removal``; ``with removal.active(pipe):`` generates with it.
The benchmark, the attack and the explorer use only this, so every method is compared on the
same pipeline object, seeds and code path. Weight edits are cached on disk by method, concepts,
settings and base-model fingerprint, so ESD trains once per concept set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

from ..edits import META_FILE, WeightEdit, applied, cross_attention_parameters, fingerprint
from ..errors import SaeuronError
from ..interventions import Replace, Reroute
from .erasure import ERASURE_METHODS, EsdConfig, UceConfig, check_concepts, erase

METHODS = ("none", "saeuron", "saeuron-paper", "esd", "uce")
SAE_METHODS = ("saeuron", "saeuron-paper")
"""The methods that need the model's SAEs and statistics (a ``SaeBundle``)."""


def default_cache_dir() -> Path:
    """Where weight edits are cached: $SAEURON_CACHE, else ~/.cache/saeuron/erasures."""
    import os

    env = os.environ.get("SAEURON_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "saeuron" / "erasures"


@dataclass
class Removal:
    """A prepared removal of ``concepts`` by ``method``."""

    method: str
    concepts: tuple[str, ...]
    setup_seconds: float
    """Wall time to set the removal up (feature selection, fine-tuning, closed-form solve)."""
    extra_storage_bytes: int
    """Bytes on disk beyond the base model: SAEs + statistics, or the weight edit."""
    extra_memory_bytes: int
    """Bytes held in memory beyond the base model while it is active."""
    settings: dict = field(default_factory=dict)
    variant: str | None = None
    """For SAE removals, which variant this is ("paper": the paper's method; else the name the
    defaults table gives the project's default)."""
    _activate: Callable[[object], ContextManager] = field(default=lambda pipe: contextlib.nullcontext(), repr=False)

    def active(self, pipe) -> ContextManager:
        """A context in which ``pipe`` generates with the concepts removed (undone on exit)."""
        return self._activate(pipe)

    @classmethod
    def from_edit(cls, edit: WeightEdit) -> "Removal":
        """An ESD / UCE weight edit as a removal (its deltas are the extra storage and memory)."""
        return cls(
            edit.method,
            edit.concepts,
            edit.setup_seconds,
            edit.storage_bytes,
            edit.storage_bytes,
            dict(edit.settings),
            _activate=lambda p: applied(p.unet, edit),
        )


def check_method(method: str) -> str:
    if method not in METHODS:
        raise SaeuronError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    return method


def parse_methods(text: str) -> tuple[str, ...]:
    """ "saeuron,esd" -> ("saeuron", "esd"), each checked, order kept, duplicates dropped."""
    methods = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not methods:
        raise SaeuronError("no method given; methods: " + ", ".join(METHODS))
    for m in methods:
        check_method(m)
    return methods


def edit_cache_key(method: str, concepts, config, base: str) -> str:
    """Folder name for a cached weight edit: readable concepts + a hash of what decides it."""
    identity = config.identity() if hasattr(config, "identity") else asdict(config)
    digest = hashlib.sha256(
        json.dumps(
            {"method": method, "concepts": list(concepts), "config": identity, "base": base}, sort_keys=True
        ).encode()
    ).hexdigest()[:12]
    return f"{'+'.join(concepts)}-{digest}"


def prepare_removal(
    pipe,
    info,
    method: str,
    concepts,
    *,
    bundle=None,
    cache: str | Path | None = None,
    esd: EsdConfig | None = None,
    uce: UceConfig | None = None,
    progress=None,
    log=None,
) -> Removal:
    """Set up ``method`` for ``concepts`` on ``pipe`` (see the module docstring).

    ``bundle`` (a ``SaeBundle``) is needed for "saeuron"; ``cache`` is a folder for weight edits
    (None: computed in memory every time). ``progress(i, n, loss)`` reports ESD iterations.
    """
    check_method(method)
    concepts = check_concepts(info, concepts)
    if method == "none":
        return Removal("none", concepts, 0.0, 0, 0)
    if method in SAE_METHODS:
        return _saeuron_removal(pipe, bundle, concepts, paper=method == "saeuron-paper")
    config = (esd or EsdConfig()) if method == "esd" else (uce or UceConfig())
    return Removal.from_edit(cached_edit(pipe, info, method, concepts, config, cache, progress, log))


def edit_folder(pipe, method: str, concepts, config, cache: str | Path) -> Path:
    """Where ``cache`` keeps the edit of ``method`` for ``concepts`` on this pipeline's weights."""
    base = fingerprint(pipe.unet, cross_attention_parameters(pipe.unet))
    return Path(cache) / method / edit_cache_key(method, tuple(concepts), config, base)


def erase_to(
    folder: str | Path, pipe, info, method: str, concepts, config, progress=None, should_stop=None
) -> WeightEdit:
    """Compute an edit (ESD checkpoints in ``<folder>.work``, resumed when there), save it to
    ``folder`` and drop the checkpoints."""
    folder = Path(folder)
    work = folder.with_name(folder.name + ".work")
    edit = erase(pipe, info, method, concepts, config, work=work, progress=progress, should_stop=should_stop)
    edit.save(folder)
    shutil.rmtree(work, ignore_errors=True)
    return edit


def cached_edit(pipe, info, method: str, concepts, config, cache, progress=None, log=None) -> WeightEdit:
    """The weight edit from ``cache`` when there, else computed (and saved there)."""
    if method not in ERASURE_METHODS:
        raise SaeuronError(f"{method!r} is not a weight-editing method ({', '.join(ERASURE_METHODS)})")
    folder = edit_folder(pipe, method, concepts, config, cache) if cache is not None else None
    if folder is not None and (folder / META_FILE).is_file():
        if log:
            log(f"{method} {'+'.join(concepts)}: cached edit {folder}")
        return WeightEdit.load(folder)
    if log:
        log(f"{method} {'+'.join(concepts)}: computing the edit")
    if folder is None:
        return erase(pipe, info, method, concepts, config, progress=progress)
    return erase_to(folder, pipe, info, method, concepts, config, progress)


def _saeuron_removal(pipe, bundle, concepts, paper: bool = False) -> Removal:
    if bundle is None:
        raise SaeuronError("SAeUron needs the model's SAEs and statistics (a SaeBundle)")
    t0 = time.perf_counter()
    interventions = bundle.unlearn(list(concepts), paper=paper)
    with bundle.hooked(pipe, interventions):
        pass  # compiling the selections is the set-up cost; the hooks are removed again
    seconds = time.perf_counter() - t0
    tensors = [p for sae in bundle.saes.values() for p in sae.parameters()] + [
        st.concept_sums for st in bundle.stats.values()
    ]
    memory = sum(t.numel() * t.element_size() for t in tensors)
    settings: dict = {}
    for iv in interventions:
        if not isinstance(iv, Reroute):
            settings.setdefault(iv.point, []).extend(iv.per_concept())
    rerouted = [iv for iv in interventions if isinstance(iv, Reroute)]
    if rerouted:  # a rerouting names itself, with the point whose SAE detects
        settings["reroute"] = {
            c: {"point": iv.point, "tau": tau, "anchor": anchor, "blocks": list(iv.blocks), "detect": iv.detect}
            for iv in rerouted
            for c, tau, anchor in iv.per_concept()
        }
    replaced = [iv for iv in interventions if isinstance(iv, Replace)]
    if replaced:  # the paper's method keeps its older settings key; a replacement names itself
        settings["replace"] = {
            c: {"strength": s, "target": iv.target, "latents": iv.latents}
            for iv in replaced
            for c, _, s in iv.per_concept()
        }
    if interventions[0].score != "paper":  # the paper's score stays implicit: older settings keep their key
        settings["score"] = interventions[0].score

    def activate(p):
        return bundle.hooked(p, interventions)

    return Removal(
        "saeuron-paper" if paper else "saeuron",
        tuple(concepts),
        seconds,
        bundle.storage_bytes(),
        memory,
        settings,
        variant=bundle.variant(paper),
        _activate=activate,
    )
