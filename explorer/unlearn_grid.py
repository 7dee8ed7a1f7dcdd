"""The Unlearn panel: target-concept and retained prompts, before and after a concept removal,
with the judge's verdicts and UA / IRA / CRA (METHOD section 6) for that small grid.

Any removal method runs here (SAeUron, and the ESD / UCE weight-editing baselines) and
``compare`` runs several on the same prompts and seeds, side by side. Every prompt is generated
at ``seeds`` consecutive seeds (the same for every prompt and method); progress is reported from
the first moment, stage by stage (before images, each method's set-up and images). The grids'
tables and export are in ``unlearn_results``."""

from __future__ import annotations

import numpy as np

from saeuron_core import minicanvas as mc
from saeuron_core.errors import SaeuronError
from saeuron_core.intervals import Rate
from saeuron_core.interventions import Unlearn
from saeuron_core.minicanvas.evaluation import JudgedImage, removal_counts

from .formatting import optional_number
from .limits import check_float, check_int
from .recipes import Recipe
from .session import ExplorerSession
from .unlearn_change import ChangeCell, ChangeGrid, FeatureMeter, concept_prompts, paper_params, removal_settings
from .unlearn_results import METRIC_NAMES, GridCell, UnlearnGrid

DEFAULT_GRID_SEEDS = 2
"""Seeds per prompt of the grid: 2 gives 8 target images with the default 4 target prompts."""
MAX_GRID_SEEDS = 4
"""Seeds per prompt at most (each seed adds a full row set per method)."""

METHODS = ("saeuron", "uce", "esd")
"""Removal methods the panel offers ("none" is the before column)."""


class UnlearnAudit:
    def __init__(self, session: ExplorerSession):
        self.session = session

    @property
    def judged(self) -> bool:
        """Whether this model has a judge and an object / style vocabulary (then the grid shows
        verdicts and UA / IRA / CRA); otherwise it measures image and feature change."""
        info = self.session.info
        return self.session.judge is not None and bool(info.concepts_of("object")) and bool(info.concepts_of("style"))

    def concepts(self) -> list[str]:
        info = self.session.info
        if info.vocabulary:
            return [*info.concepts_of("object"), *info.concepts_of("style")]
        bundle = self.session.bundle  # a model with its own concepts: those of the statistics
        return list(
            dict.fromkeys(
                c for kind, point in bundle.point_of_kind.items() for c in bundle.stats[point].concepts_of_kind(kind)
            )
        )

    def methods(self) -> list[str]:
        if self.judged or self.session.limits.train_esd:
            return list(METHODS)
        return [m for m in METHODS if m != "esd"]  # ESD trains the U-Net; this server does not

    def compare(
        self,
        concepts: list[str],
        methods: list[str],
        seed: int = 0,
        tau: float | None = None,
        gamma: float | None = None,
        progress=None,
        seeds: int = DEFAULT_GRID_SEEDS,
    ) -> list[UnlearnGrid]:
        """One grid per method on the same prompts and seeds (the before images are shared).

        ``tau`` / ``gamma`` may be None or empty text (the defaults table applies) or numbers.
        ``progress(fraction, text)`` hears every stage, the first before any work starts."""
        tau, gamma = optional_number("tau", tau), optional_number("gamma", gamma)
        methods = list(dict.fromkeys(methods or []))
        if not methods:
            raise SaeuronError(f"choose at least one method ({', '.join(METHODS)})")
        for m in methods:
            if m not in METHODS:
                raise SaeuronError(f"unknown method {m!r}; the panel offers {', '.join(METHODS)}")
        if not self.judged:
            return self.measure(concepts, methods, seed, tau, gamma, progress)
        for m in methods:  # every request checked before the first image
            self._check_request(
                concepts, tau if m == "saeuron" else None, gamma if m == "saeuron" else None, seed, m, seeds
            )
        n_images = len(self._pairs(list(dict.fromkeys(concepts)))) * check_int("seeds", seeds, 1, MAX_GRID_SEEDS)
        stages = StageProgress(
            progress, [("before", n_images)] + [(m, n_images * (3 if m == "esd" else 1)) for m in methods]
        )
        grids = []
        for m in methods:
            grids.append(
                self.run(
                    concepts,
                    tau if m == "saeuron" else None,
                    gamma if m == "saeuron" else None,
                    seed,
                    method=m,
                    seeds=seeds,
                    stages=stages,
                )
            )
        stages.report("done", 1.0, "done")
        return grids

    def saeuron_interventions(self, concepts: list[str], tau: float | None, gamma: float | None) -> tuple[list, dict]:
        """SAeUron's interventions and, per concept, what removes it with which settings and where
        they came from (``removal_settings``): given tau / gamma, the paper's scaling with them;
        else the defaults table's removal where it has the concept (a rerouting where it names
        one), else the paper's settings."""
        bundle = self.session.bundle
        if tau is not None:
            interventions = bundle.unlearn(concepts, tau, gamma)
            return interventions, removal_settings(interventions, {c: "given" for c in concepts})
        sources = {c: self.defaults_with_source(c)[2] for c in concepts}
        table = [c for c in concepts if bundle.params_source(c) != "no default"]
        rows: dict[str, list[tuple[str, float, float]]] = {}
        kind_at: dict[str, str] = {}
        for c in concepts:
            kind = bundle.kind_of(c)
            for point in bundle.points_of_kind[kind]:
                if kind_at.setdefault(point, kind) != kind:
                    raise SaeuronError(
                        f"{point} would remove concepts of two kinds ({kind_at[point]} and {kind}) at once; "
                        "remove them one kind at a time"
                    )
                if c not in table:
                    tau_c, gamma_c, _ = self.defaults_with_source(c)
                    rows.setdefault(point, []).append((c, tau_c, gamma_c))
        interventions = (bundle.unlearn(table) if table else []) + [
            Unlearn(tuple(r[0] for r in rs), tuple(r[1] for r in rs), tuple(r[2] for r in rs), point=p)
            for p, rs in rows.items()
        ]
        return interventions, removal_settings(interventions, sources)

    def default_removal(self, concept: str) -> dict:
        """How the panel removes ``concept`` while tau and gamma are empty (``removal_settings``)."""
        return self.saeuron_interventions([concept], None, None)[1][concept]

    def measure(
        self,
        concepts: list[str],
        methods: list[str],
        seed: int = 0,
        tau: float | None = None,
        gamma: float | None = None,
        progress=None,
    ) -> ChangeGrid:
        """Without a judge: before / after images of the concepts' own prompts and a few others,
        with image-level change and the drop of the removed concepts' selected features."""
        session = self.session
        concepts = list(dict.fromkeys(concepts or []))
        if not concepts:
            raise SaeuronError("choose at least one concept to unlearn")
        known = self.concepts()
        for c in concepts:
            if c not in known:
                raise SaeuronError(f"unknown concept {c!r}; the statistics know {', '.join(known)}")
        if (tau is None) != (gamma is None):
            raise SaeuronError("give both tau and gamma, or neither (then the defaults apply)")
        if tau is not None:
            tau = check_float("tau", tau, 1e-6, 100 - 1e-6)
            gamma = check_float("gamma", gamma, -session.limits.max_gamma, session.limits.max_gamma)
        seed = check_int("seed", seed, 0, session.limits.max_seed)
        for m in methods:
            if m not in self.methods():
                raise SaeuronError(f"{m} is not offered here; choose from {', '.join(self.methods())}")
        interventions, params = self.saeuron_interventions(concepts, tau, gamma)
        meter = FeatureMeter(session.bundle, interventions)
        rows = concept_prompts(session.bundle, concepts, session.limits.max_grid_prompts)
        steps, guidance = session.info.default_steps, session.info.default_guidance
        removals, setup = {}, {}
        for m in methods:
            if m != "saeuron":
                removals[m] = session.removal(m, concepts, progress)
                setup[m] = removals[m].setup_seconds
        cells = []
        for prompt, role in rows:
            image, maps, timesteps = session.captured_image(prompt, seed, steps, guidance, meter.points)
            cell = ChangeCell(prompt, role, image, meter.measure(maps, timesteps))
            for m in methods:
                if m == "saeuron":
                    after, maps, timesteps = session.captured_image(
                        prompt, seed, steps, guidance, meter.points, interventions=interventions
                    )
                else:
                    after, maps, timesteps = session.captured_image(
                        prompt, seed, steps, guidance, meter.points, removal=removals[m]
                    )
                cell.after[m] = after
                cell.feature_after[m] = meter.measure(maps, timesteps)
            cells.append(cell)
        return ChangeGrid(
            tuple(concepts),
            tuple(methods),
            seed,
            cells,
            params,
            tuple(meter.points),
            meter.selected_per_step(),
            setup,
            tuple(interventions),
        )

    def best_default_concept(self) -> str | None:
        """The concept the defaults table says it removes best (its "score"), so that the panel's
        untouched defaults show a removal that works; else the first concept with defaults."""
        table = self.session.bundle.defaults.get("concepts", {})
        if not self.judged:
            return next(iter(self.concepts()), None)
        known = [c for c in self.concepts() if self._has_defaults(c)]
        if not known:
            return None
        return max(known, key=lambda c: float(table.get(c, {}).get("score", 0.0)))

    def _has_defaults(self, concept: str) -> bool:
        try:
            self.defaults(concept)
        except SaeuronError:
            return False
        return True

    def defaults(self, concept: str) -> tuple[float, float]:
        """(tau, gamma) of ``concept``: the defaults table's; without a judge, where the table has
        no row, the paper's settings (see ``defaults_source``)."""
        return self.defaults_with_source(concept)[:2]

    def defaults_with_source(self, concept: str) -> tuple[float, float, str]:
        bundle = self.session.bundle
        try:
            tau, gamma = bundle.default_params(concept)
            return tau, gamma, bundle.params_source(concept)
        except SaeuronError:
            if self.judged:
                raise
        bundle.kind_of(concept)  # an unknown concept fails here, clearly
        (tau, gamma), source = paper_params(concept)
        return tau, gamma, source

    def _check_request(
        self, concepts, tau, gamma, seed, method, seeds
    ) -> tuple[list[str], float | None, float | None, int, int]:
        """The validated request of one grid (one clear message per problem, before any work)."""
        session = self.session
        tau, gamma = optional_number("tau", tau), optional_number("gamma", gamma)
        if method not in METHODS:
            raise SaeuronError(f"unknown method {method!r}; the panel offers {', '.join(METHODS)}")
        if session.judge is None:
            raise SaeuronError("the unlearn grid needs a judge; start the app with --judge <folder>")
        if not session.info.concepts_of("object") or not session.info.concepts_of("style"):
            raise SaeuronError(
                "the unlearn grid needs a model with a concept vocabulary (objects and styles in saeuron.json)"
            )
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
        seeds = check_int("seeds", seeds, 1, MAX_GRID_SEEDS)
        seed = check_int("seed", seed, 0, session.limits.max_seed - seeds + 1)
        if method == "saeuron":
            session.bundle.unlearn(concepts, tau, gamma)  # a concept without defaults fails here
        return concepts, tau, gamma, seed, seeds

    def run(
        self,
        concepts: list[str],
        tau: float | None = None,
        gamma: float | None = None,
        seed: int = 0,
        method: str = "saeuron",
        progress=None,
        seeds: int = DEFAULT_GRID_SEEDS,
        stages: "StageProgress | None" = None,
    ) -> UnlearnGrid:
        """Remove ``concepts`` with ``method`` and judge a small grid before and after: every
        prompt at seeds ``seed`` .. ``seed + seeds - 1``.

        ``progress(fraction, text)`` hears every stage (``stages``: the bar shared by a
        comparison), ESD's set-up and fine-tuning included."""
        session = self.session
        concepts, tau, gamma, seed, seeds = self._check_request(concepts, tau, gamma, seed, method, seeds)
        steps, guidance = session.info.default_steps, session.info.default_guidance
        pairs = [(o, s, role, k) for o, s, role in self._pairs(concepts) for k in range(seed, seed + seeds)]
        jobs = [(mc.prompt(o, s), k) for o, s, _, k in pairs]
        if stages is None:
            stages = StageProgress(
                progress, [("before", len(jobs)), (method, len(jobs) * (3 if method == "esd" else 1))]
            )
        before = []
        for i, job in enumerate(jobs):
            stages.report("before", i / len(jobs), f"before: image {i + 1}/{len(jobs)}")
            before += session.plain_images([job], steps, guidance)
        after = []
        variant = None
        if method == "saeuron":
            interventions, setup = tuple(session.bundle.unlearn(concepts, tau, gamma)), 0.0
            variant = session.bundle.variant(paper=tau is not None)
            base = session.default_recipe(jobs[0][0])
            for i, (p, k) in enumerate(jobs):
                stages.report(method, i / len(jobs), f"SAeUron: image {i + 1}/{len(jobs)}")
                after.append(
                    session.render(Recipe(p, k, steps, guidance, interventions, base.model, base.sae, base.stats))
                )
        else:
            images_share = 1 / 3 if method == "esd" else 0.5
            setup_share = 1 - images_share
            name = method.upper()
            stages.report(
                method,
                0.0,
                f"{name}: preparing the edit for {'+'.join(concepts)} (from the cache, or computed now: "
                + ("a training pool of concept images first, then fine-tuning)" if method == "esd" else "closed form)"),
            )

            def heard(fraction, text):
                stages.report(method, setup_share * fraction, text)

            removal = session.removal(method, concepts, heard)
            interventions, setup = (), removal.setup_seconds
            for i, job in enumerate(jobs):
                stages.report(method, setup_share + images_share * i / len(jobs), f"{name}: image {i + 1}/{len(jobs)}")
                after += session.images_with_removal(removal, [job], steps, guidance)
        stages.report(method, 1.0, f"{method}: judging")
        seen_before, seen_after = self._judge(before), self._judge(after)
        cells = [
            GridCell(o, s, role, b, a, vb[:2], va[:2], k, vb[2:], va[2:])
            for (o, s, role, k), b, a, vb, va in zip(pairs, before, after, seen_before, seen_after)
        ]
        counts_before, counts_after = self._counts(cells, concepts, "before"), self._counts(cells, concepts, "after")
        return UnlearnGrid(
            tuple(concepts),
            interventions,
            seed,
            cells,
            self._rates(counts_before),
            self._rates(counts_after),
            method,
            setup,
            counts_before,
            counts_after,
            tuple(range(seed, seed + seeds)),
            variant,
        )

    def _pairs(self, concepts: list[str]) -> list[tuple[str, str, str]]:
        """(object, style, role) of the grid: half target prompts, half retained, within the cap."""
        objects, styles = self.session.info.concepts_of("object"), self.session.info.concepts_of("style")
        budget = self.session.limits.max_grid_prompts
        removed = set(concepts)
        target = []
        for i in range(max(budget // 2, 1)):
            concept = concepts[i % len(concepts)]
            rotate = i // len(concepts)
            pair = (
                (concept, styles[rotate % len(styles)])
                if concept in objects
                else (objects[rotate % len(objects)], concept)
            )
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

    def _judge(self, images: list[np.ndarray]) -> list[tuple[str, str, float, float]]:
        """(object, style, object confidence, style confidence) per image."""
        verdict = self.session.judge.classify(np.stack(images))
        return list(zip(verdict["object"], verdict["style"], verdict["object_conf"], verdict["style_conf"]))

    @staticmethod
    def _records(cells: list[GridCell], concept: str, concepts: list[str], when: str) -> list[JudgedImage]:
        """Judged cells (``when``: "before" / "after") for ``concept``'s metrics: those that show
        no other removed concept."""
        others = set(concepts) - {concept}
        return [
            JudgedImage(
                c.object_name, c.style, c.seed, *getattr(c, f"{when}_verdict"), *getattr(c, f"{when}_confidence")
            )
            for c in cells
            if not others & {c.object_name, c.style}
        ]

    @classmethod
    def _counts(cls, cells: list[GridCell], concepts: list[str], when: str) -> dict[str, dict[str, tuple[int, int]]]:
        """(successes, images) behind each metric of ``METRIC_NAMES``, from ``removal_counts``
        (UA: images showing the concept; IRA: the others; CRA: all; kept_on_target: the concept's
        own images whose other concept the judge still sees)."""
        out = {}
        for concept in concepts:
            rates = removal_counts(cls._records(cells, concept, concepts, when), concept)
            out[concept] = {m: (rates[m].k, rates[m].n) for m in METRIC_NAMES}
        return out

    @staticmethod
    def _rates(counts: dict[str, dict[str, tuple[int, int]]]) -> dict[str, dict[str, float]]:
        return {c: {m: Rate(k, n).value for m, (k, n) in by_metric.items()} for c, by_metric in counts.items()}


class StageProgress:
    """One progress bar over weighted stages (before images, then each method): ``report(stage,
    fraction within it, text)`` calls ``progress(overall fraction, text)``; None: silent."""

    def __init__(self, progress, stages: list[tuple[str, float]]):
        self.progress = progress
        total = sum(w for _, w in stages) or 1.0
        self.start, self.weight, at = {}, {}, 0.0
        for name, w in stages:
            self.start[name], self.weight[name] = at / total, w / total
            at += w

    def report(self, stage: str, fraction: float, text: str) -> None:
        if self.progress is None:
            return
        if stage == "done":
            self.progress(1.0, text)
            return
        self.progress(min(1.0, self.start[stage] + self.weight[stage] * max(0.0, min(1.0, fraction))), text)
