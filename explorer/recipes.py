"""Recipes: everything that reproduces an output (model, SAE, prompt, seed, steps, guidance,
interventions), as JSON, as a URL query string and as a Python snippet using ``saeuron_core``."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from urllib.parse import parse_qs, urlencode

from saeuron_core.errors import SaeuronError
from saeuron_core.interventions import (
    AddConcept,
    Intervention,
    PromptAdd,
    Reroute,
    ScaleFeatures,
    Steer,
    StepWindow,
    Unlearn,
)

FORMAT = "saeuron-recipe/1"


@dataclass(frozen=True, eq=False)
class Recipe:
    prompt: str
    seed: int
    steps: int
    guidance: float
    interventions: tuple[Intervention, ...] = ()
    model: str = "minicanvas"
    sae: str | None = None
    """SAE folder; None: the bundled SAEs."""
    stats: str | None = None
    """Feature statistics folder; None: the bundled statistics."""

    def with_interventions(self, interventions) -> "Recipe":
        return replace(self, interventions=tuple(interventions))

    def _fields(self) -> tuple:
        return (self.prompt, self.seed, self.steps, self.guidance, self.interventions, self.model, self.sae, self.stats)

    def __eq__(self, other) -> bool:  # a checked recipe equals the plain one with the same fields
        return isinstance(other, Recipe) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def unchecked(self) -> "Recipe":
        """A plain ``Recipe`` with the same fields (to change them: it is checked again)."""
        return Recipe(
            self.prompt, self.seed, self.steps, self.guidance, self.interventions, self.model, self.sae, self.stats
        )


@dataclass(frozen=True, eq=False)
class CheckedRecipe(Recipe):
    """A recipe that ``check_recipe`` accepted (within the caps, for the session's SAEs): made
    once where a request enters, then taken as is by everything downstream. Change fields on
    ``unchecked()``, never with ``replace`` on this class."""

    def with_interventions(self, interventions) -> Recipe:
        interventions = tuple(interventions)
        # dropping every intervention keeps a checked recipe valid; anything else is checked again
        return (
            replace(self, interventions=()) if not interventions else self.unchecked().with_interventions(interventions)
        )


# --------------------------------------------------------------------------- interventions <-> dicts
def _as_list(value):
    """A per-concept tuple as a JSON list (a single number stays a number)."""
    return list(value) if isinstance(value, tuple) else value


def _window(steps: StepWindow | None) -> list | None:
    return None if steps is None else [steps.start, steps.stop]


def intervention_to_dict(iv: Intervention) -> dict:
    if isinstance(iv, ScaleFeatures):
        return {
            "type": "ScaleFeatures",
            "point": iv.point,
            "features": list(iv.features),
            "factor": iv.factor,
            "steps": _window(iv.steps),
        }
    if isinstance(iv, Steer):
        mask = None if iv.mask is None else [list(r) if isinstance(r, tuple) else r for r in iv.mask]
        return {
            "type": "Steer",
            "point": iv.point,
            "features": list(iv.features),
            "strength": iv.strength,
            "mask": mask,
            "steps": _window(iv.steps),
        }
    if isinstance(iv, Unlearn):
        spec = {
            "type": "Unlearn",
            "point": iv.point,
            "concepts": list(iv.concepts),
            "tau": _as_list(iv.tau),
            "gamma": _as_list(iv.gamma),
            "steps": _window(iv.steps),
        }
        return (
            spec if iv.score == "paper" else {**spec, "score": iv.score}
        )  # recipes from before the variant stay as they were
    if isinstance(iv, AddConcept):
        tau = list(iv.tau) if isinstance(iv.tau, tuple) else iv.tau
        spec = {
            "type": "AddConcept",
            "point": iv.point,
            "concepts": list(iv.concepts),
            "strength": iv.strength,
            "tau": tau,
            "steps": _window(iv.steps),
        }
        spec = spec if iv.score == "paper" else {**spec, "score": iv.score}
        return spec if iv.cond_only else {**spec, "cond_only": False}
    if isinstance(iv, Reroute):
        spec = {
            "type": "Reroute",
            "point": iv.point,
            "concepts": list(iv.concepts),
            "anchor": _as_list(iv.anchor),
            "blocks": list(iv.blocks),
            "tau": _as_list(iv.tau),
            "detect": iv.detect,
            "match": iv.match,
            "steps": _window(iv.steps),
        }
        if not iv.heed_prompt:
            spec["heed_prompt"] = False
        if iv.untrusted != "anchor":
            spec["untrusted"] = iv.untrusted
        return spec if iv.score == "paper" else {**spec, "score": iv.score}
    if isinstance(iv, PromptAdd):
        return {
            "type": "PromptAdd",
            "point": iv.point,
            "concepts": list(iv.concepts),
            "strength": iv.strength,
            "blocks": list(iv.blocks),
            "steps": _window(iv.steps),
        }
    raise SaeuronError(f"not an intervention: {iv!r}")


_FIELDS = {
    "ScaleFeatures": ({"type", "point", "features", "factor"}, {"steps"}),
    "Steer": ({"type", "point", "features", "strength"}, {"steps", "mask"}),
    "Unlearn": ({"type", "point", "concepts", "tau", "gamma"}, {"steps", "score"}),
    "AddConcept": ({"type", "point", "concepts", "strength", "tau"}, {"steps", "score", "cond_only"}),
    "Reroute": (
        {"type", "point", "concepts", "anchor", "blocks", "tau", "detect", "match"},
        {"steps", "score", "heed_prompt", "untrusted"},
    ),
    "PromptAdd": ({"type", "point", "concepts", "strength"}, {"blocks", "steps"}),
}
"""Per type: (required fields, optional fields). ``AddConcept`` is the add handle of recipes made
before ``PromptAdd`` (steering the paper's selected latents in): they still load and run."""


def intervention_from_dict(data) -> Intervention:
    if not isinstance(data, dict) or data.get("type") not in _FIELDS:
        raise SaeuronError(
            f"an intervention must be an object with type one of {', '.join(_FIELDS)}; got {data!r:.120}"
        )
    required, optional = _FIELDS[data["type"]]
    missing, unknown = required - set(data), set(data) - required - optional
    if missing or unknown:
        raise SaeuronError(
            f"{data['type']} intervention: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}"
        )
    steps = _read_window(data.get("steps"))
    try:
        if data["type"] == "ScaleFeatures":
            return ScaleFeatures(tuple(data["features"]), float(data["factor"]), steps, data["point"])
        if data["type"] == "Steer":
            return Steer(tuple(data["features"]), float(data["strength"]), data.get("mask"), steps, data["point"])
        if data["type"] == "AddConcept":
            return AddConcept(
                tuple(data["concepts"]),
                float(data["strength"]),
                _number_or_tuple(data["tau"]),
                steps,
                point=data["point"],
                score=data.get("score", "paper"),
                cond_only=bool(data.get("cond_only", True)),
            )
        if data["type"] == "PromptAdd":
            return PromptAdd(
                _strings(data["concepts"], "concepts", "PromptAdd"),
                float(data["strength"]),
                blocks=_strings(data.get("blocks", []), "blocks", "PromptAdd", empty=True),
                steps=steps,
                point=data["point"],
            )
        if data["type"] == "Reroute":
            anchor = data["anchor"]
            return Reroute(
                _strings(data["concepts"], "concepts"),
                anchor=anchor if isinstance(anchor, str) else _strings(anchor, "anchor"),
                blocks=_strings(data["blocks"], "blocks", empty=True),
                tau=_number_or_tuple(data["tau"]),
                detect=float(data["detect"]),
                match=float(data["match"]),
                steps=steps,
                point=data["point"],
                score=data.get("score", "paper"),
                heed_prompt=_flag(data.get("heed_prompt", True), "heed_prompt"),
                untrusted=data.get("untrusted", "anchor"),
            )
        return Unlearn(
            tuple(data["concepts"]),
            _number_or_tuple(data["tau"]),
            _number_or_tuple(data["gamma"]),
            steps,
            point=data["point"],
            score=data.get("score", "paper"),
        )
    except (TypeError, ValueError) as e:
        if isinstance(e, SaeuronError):
            raise
        raise SaeuronError(f"{data['type']} intervention has a malformed field ({e})") from None


def interventions_from_json(text: str | None) -> tuple[Intervention, ...]:
    """The interventions in an editable JSON list (what recipes hold), checked one by one."""
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError as e:
        raise SaeuronError(f"the interventions are not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise SaeuronError("the interventions must be a JSON list")
    return tuple(intervention_from_dict(d) for d in data)


def _read_window(steps) -> StepWindow | None:
    if steps is None:
        return None
    if (
        not isinstance(steps, list)
        or len(steps) != 2
        or not isinstance(steps[0], int)
        or not (steps[1] is None or isinstance(steps[1], int))
    ):
        raise SaeuronError(f"a step window is [start, stop] (stop may be null), got {steps!r}")
    return StepWindow(steps[0], steps[1])


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise SaeuronError(f"Reroute intervention: {name} must be true or false, got {value!r:.120}")
    return value


def _strings(value, name: str, kind: str = "Reroute", empty: bool = False) -> tuple[str, ...]:
    """A JSON list of names as a tuple (``kind``: the intervention type, for the message;
    ``empty``: the list may be empty)."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or not (value or empty):
        raise SaeuronError(f"{kind} intervention: {name} must be a list of names, got {value!r:.120}")
    return tuple(value)


def _number_or_tuple(value):
    return tuple(float(v) for v in value) if isinstance(value, list) else float(value)


# --------------------------------------------------------------------------- JSON
def recipe_to_dict(recipe: Recipe) -> dict:
    return {
        "format": FORMAT,
        "model": recipe.model,
        "sae": recipe.sae,
        "stats": recipe.stats,
        "prompt": recipe.prompt,
        "seed": recipe.seed,
        "steps": recipe.steps,
        "guidance": recipe.guidance,
        "interventions": [intervention_to_dict(iv) for iv in recipe.interventions],
    }


def recipe_to_json(recipe: Recipe) -> str:
    return json.dumps(recipe_to_dict(recipe), indent=2)


_RECIPE_KEYS = {"format", "model", "sae", "stats", "prompt", "seed", "steps", "guidance", "interventions"}


def recipe_from_json(text: str) -> Recipe:
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as e:
        raise SaeuronError(f"the recipe is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SaeuronError("a recipe is a JSON object")
    if data.get("format") != FORMAT:
        raise SaeuronError(f"not a recipe of format {FORMAT!r} (format: {data.get('format')!r})")
    missing, unknown = {"prompt", "seed", "steps", "guidance"} - set(data), set(data) - _RECIPE_KEYS
    if missing or unknown:
        raise SaeuronError(f"recipe: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}")
    return _recipe_from_fields(data)


def _recipe_from_fields(data: dict) -> Recipe:
    interventions = data.get("interventions") or []
    if not isinstance(interventions, list):
        raise SaeuronError("recipe: interventions must be a list")
    return Recipe(
        prompt=data["prompt"],
        seed=data["seed"],
        steps=data["steps"],
        guidance=data["guidance"],
        interventions=tuple(intervention_from_dict(d) for d in interventions),
        model=data.get("model", "minicanvas"),
        sae=data.get("sae"),
        stats=data.get("stats"),
    )


# --------------------------------------------------------------------------- URL
def recipe_to_query(recipe: Recipe) -> str:
    """A URL query string (without "?") that restores the recipe in the app."""
    fields = {"prompt": recipe.prompt, "seed": recipe.seed, "steps": recipe.steps, "guidance": recipe.guidance}
    if recipe.interventions:
        fields["interventions"] = json.dumps(
            [intervention_to_dict(iv) for iv in recipe.interventions], separators=(",", ":")
        )
    return urlencode(fields)


def recipe_from_query(
    query: str | dict, model: str = "minicanvas", sae: str | None = None, stats: str | None = None
) -> Recipe | None:
    """The recipe in a query string (or a dict of query parameters); None when it holds none."""
    params = {k: v[-1] for k, v in parse_qs(query).items()} if isinstance(query, str) else dict(query)
    if "prompt" not in params:
        return None
    try:
        data = {
            "prompt": params["prompt"],
            "seed": int(params.get("seed", 0)),
            "steps": int(params["steps"]),
            "guidance": float(params["guidance"]),
            "interventions": json.loads(params.get("interventions", "[]")),
            "model": model,
            "sae": sae,
            "stats": stats,
        }
    except (KeyError, ValueError) as e:
        raise SaeuronError(f"the URL does not hold a valid recipe ({type(e).__name__}: {e})") from None
    return _recipe_from_fields(data)


# --------------------------------------------------------------------------- Python snippet
def _core_repr(iv: Intervention) -> str:
    window = "None" if iv.steps is None else f"StepWindow({iv.steps.start}, {iv.steps.stop})"
    if isinstance(iv, ScaleFeatures):
        return f"ScaleFeatures(features={iv.features!r}, factor={iv.factor!r}, steps={window}, point={iv.point!r})"
    if isinstance(iv, Steer):
        return (
            f"Steer(features={iv.features!r}, strength={iv.strength!r}, mask={iv.mask!r}, "
            f"steps={window}, point={iv.point!r})"
        )
    if isinstance(iv, AddConcept):
        return (
            f"AddConcept(concepts={iv.concepts!r}, strength={iv.strength!r}, tau={iv.tau!r}, steps={window}, "
            f"point={iv.point!r}, score={iv.score!r}, cond_only={iv.cond_only!r})"
        )
    if isinstance(iv, PromptAdd):
        return (
            f"PromptAdd(concepts={iv.concepts!r}, strength={iv.strength!r}, blocks={iv.blocks!r}, steps={window}, "
            f"point={iv.point!r})"
        )
    score = "" if iv.score == "paper" else f", score={iv.score!r}"
    if isinstance(iv, Reroute):
        return (
            f"Reroute(concepts={iv.concepts!r}, anchor={iv.anchor!r}, blocks={iv.blocks!r}, tau={iv.tau!r}, "
            f"detect={iv.detect!r}, match={iv.match!r}, steps={window}, point={iv.point!r}{score}"
            f"{'' if iv.heed_prompt else ', heed_prompt=False'}"
            f"{'' if iv.untrusted == 'anchor' else f', untrusted={iv.untrusted!r}'})"
        )
    return (
        f"Unlearn(concepts={iv.concepts!r}, tau={iv.tau!r}, gamma={iv.gamma!r}, steps={window}, "
        f"point={iv.point!r}{score})"
    )


def recipe_to_python(recipe: Recipe, defaults: str | None = None) -> str:
    """A script that reproduces the recipe's edited image with ``saeuron_core`` alone."""
    ivs = ",\n    ".join(_core_repr(iv) for iv in recipe.interventions)
    generate = (
        f"generate_with(pipe, bundle, interventions, {recipe.prompt!r}, "
        f"[{recipe.seed}], {recipe.steps}, {recipe.guidance!r})[0]"
    )
    return f"""import torch
from saeuron_core.interventions import AddConcept, PromptAdd, Reroute, ScaleFeatures, Steer, StepWindow, Unlearn
from saeuron_core.pipeline import load_pipeline, model_info
from saeuron_core.unlearning import SaeBundle, generate_with

torch.set_num_threads(1)
pipe = load_pipeline({recipe.model!r})
bundle = SaeBundle.load(model_info(pipe, {recipe.model!r}), {recipe.sae!r}, {recipe.stats!r}, {defaults!r})
interventions = [
    {ivs}
]
image = {generate}
image.save("recipe.png")
"""
