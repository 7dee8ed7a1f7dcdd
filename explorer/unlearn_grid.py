"""The Unlearn panel: target-concept and retained prompts, before and after a concept removal,
with the judge's verdicts and UA / IRA / CRA (METHOD section 6) for that small grid.

Any removal method runs here (SAeUron, and the ESD / UCE weight-editing baselines) and
``compare`` runs several on the same prompts and seed, side by side."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saeuron_core import minicanvas as mc
from saeuron_core.errors import SaeuronError
from saeuron_core.minicanvas.evaluation import JudgedImage, removal_metrics
from saeuron_core.interventions import Unlearn

from .limits import check_float, check_int
from .recipes import Recipe
from .session import ExplorerSession


@dataclass(frozen=True)
class GridCell:
    object_name: str
    style: str
    role: str
    """"target" (shows a removed concept) or "retained"."""
    before: np.ndarray
    after: np.ndarray
    before_verdict: tuple[str, str]
    """(object, style) the judge sees in ``before``."""
    after_verdict: tuple[str, str]

    @property
    def prompt(self) -> str:
        return mc.prompt(self.object_name, self.style)


@dataclass(frozen=True)
class UnlearnGrid:
    concepts: tuple[str, ...]
    interventions: tuple[Unlearn, ...]
    """SAeUron's interventions (empty for the weight-editing methods)."""
    seed: int
    cells: list[GridCell]
    metrics_before: dict[str, dict[str, float]]
    """Per removed concept: UA, IRA, CRA of the unedited images (UA there is the judge's error)."""
    metrics_after: dict[str, dict[str, float]]
    method: str = "saeuron"
    setup_seconds: float = 0.0
    """Wall time the removal took to set up (0 when it came from a cache)."""


METHODS = ("saeuron", "uce", "esd")
"""Removal methods the panel offers ("none" is the before column)."""


class UnlearnAudit:
    def __init__(self, session: ExplorerSession):
        self.session = session

    def concepts(self) -> list[str]:
        return [*self.session.info.objects, *self.session.info.styles]

    def methods(self) -> list[str]:
        return list(METHODS)

    def compare(self, concepts: list[str], methods: list[str], seed: int = 0, tau: float | None = None, gamma: float | None = None, progress=None) -> list[UnlearnGrid]:
        """One grid per method on the same prompts and seed (the before images are shared)."""
        methods = list(dict.fromkeys(methods or []))
        if not methods:
            raise SaeuronError(f"choose at least one method ({', '.join(METHODS)})")
        for m in methods:
            if m not in METHODS:
                raise SaeuronError(f"unknown method {m!r}; the panel offers {', '.join(METHODS)}")
        return [self.run(concepts, tau if m == "saeuron" else None, gamma if m == "saeuron" else None, seed, method=m, progress=progress) for m in methods]

    def defaults(self, concept: str) -> tuple[float, float]:
        """(tau, gamma) of ``concept`` in the bundled defaults table."""
        return self.session.bundle.default_params(concept)

    def run(self, concepts: list[str], tau: float | None = None, gamma: float | None = None, seed: int = 0, method: str = "saeuron", progress=None) -> UnlearnGrid:
        """Remove ``concepts`` with ``method`` and judge a small grid before and after.

        ``progress(fraction, text)`` hears about ESD fine-tuning (the one slow set-up)."""
        session = self.session
        if method not in METHODS:
            raise SaeuronError(f"unknown method {method!r}; the panel offers {', '.join(METHODS)}")
        if session.judge is None:
            raise SaeuronError("the unlearn grid needs a judge; start the app with --judge <folder>")
        if not session.info.objects or not session.info.styles:
            raise SaeuronError("the unlearn grid needs a model with a concept vocabulary (objects and styles in saeuron.json)")
        concepts = list(dict.fromkeys(concepts or []))
        if not concepts:
            raise SaeuronError("choose at least one concept to unlearn")
        for c in concepts:
            if c not in self.concepts():
                raise SaeuronError(f"unknown concept {c!r}; this model knows {', '.join(self.concepts())}")
        if (tau is None) != (gamma is None):
            raise SaeuronError("give both tau and gamma, or neither (then the defaults table applies)")
        if tau is not None and method != "saeuron":
            raise SaeuronError(f"tau and gamma are SAeUron's settings; {method} takes none here")
        if tau is not None:
            tau = check_float("tau", tau, 1e-6, 100 - 1e-6)
            gamma = check_float("gamma", gamma, -session.limits.max_gamma, session.limits.max_gamma)
        seed = check_int("seed", seed, 0, session.limits.max_seed)
        steps, guidance = session.info.default_steps, session.info.default_guidance
        pairs = self._pairs(concepts)
        jobs = [(mc.prompt(o, s), seed) for o, s, _ in pairs]
        before = session.plain_images(jobs, steps, guidance)
        if method == "saeuron":
            interventions, setup = tuple(session.bundle.unlearn(concepts, tau, gamma)), 0.0
            base = session.default_recipe(jobs[0][0])
            after = [session.render(Recipe(p, seed, steps, guidance, interventions, base.model, base.sae, base.stats)) for p, _ in jobs]
        else:
            removal = session.removal(method, concepts, progress)
            interventions, setup = (), removal.setup_seconds
            after = session.images_with_removal(removal, jobs, steps, guidance)
        seen_before, seen_after = self._judge(before), self._judge(after)
        cells = [GridCell(o, s, role, b, a, vb, va) for (o, s, role), b, a, vb, va in zip(pairs, before, after, seen_before, seen_after)]
        return UnlearnGrid(tuple(concepts), interventions, seed, cells, self._metrics(cells, concepts, "before_verdict"), self._metrics(cells, concepts, "after_verdict"), method, setup)

    def _pairs(self, concepts: list[str]) -> list[tuple[str, str, str]]:
        """(object, style, role) of the grid: half target prompts, half retained, within the cap."""
        objects, styles = self.session.info.objects, self.session.info.styles
        budget = self.session.limits.max_grid_prompts
        removed = set(concepts)
        target = []
        for i in range(max(budget // 2, 1)):
            concept = concepts[i % len(concepts)]
            rotate = i // len(concepts)
            pair = (concept, styles[rotate % len(styles)]) if concept in objects else (objects[rotate % len(objects)], concept)
            if pair not in target:
                target.append(pair)
        kept_objects = [o for o in objects if o not in removed] or list(objects)
        kept_styles = [s for s in styles if s not in removed] or list(styles)
        retained = []
        for i in range(budget - len(target)):
            pair = (kept_objects[i % len(kept_objects)], kept_styles[(i * 3 + 1) % len(kept_styles)])
            if pair not in retained and pair not in target:
                retained.append(pair)
        return [(o, s, "target") for o, s in target] + [(o, s, "retained") for o, s in retained]

    def _judge(self, images: list[np.ndarray]) -> list[tuple[str, str]]:
        verdict = self.session.judge.classify(np.stack(images))
        return list(zip(verdict["object"], verdict["style"]))

    @staticmethod
    def _metrics(cells: list[GridCell], concepts: list[str], verdict: str) -> dict[str, dict[str, float]]:
        """UA / IRA / CRA per removed concept, over the cells that show no other removed concept."""
        out = {}
        for concept in concepts:
            others = set(concepts) - {concept}
            records = [
                JudgedImage(c.object_name, c.style, 0, *getattr(c, verdict))
                for c in cells
                if not others & {c.object_name, c.style}
            ]
            out[concept] = removal_metrics(records, concept)
        return out
