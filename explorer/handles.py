"""Concept handles ("remove CONCEPT", "add CONCEPT" as intervention rows, checked when added) and
what each row of a generation did: the edited features' activation before / after and, with a
judge, its verdict before / after, so that "nothing changed" is visible and explained."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from saeuron_core.errors import SaeuronError
from saeuron_core.hooks import Step, to_tokens
from saeuron_core.interventions import AddConcept, Intervention, PromptAdd, Reroute, ScaleFeatures, Unlearn
from saeuron_core.pipeline import token_ids
from saeuron_core.prompt_add import PromptAddEdit
from saeuron_core.prompts import names_another

from .formatting import percent, sig3
from .recipe_checks import check_interventions
from .recipes import CheckedRecipe
from .selection import Detection, detections, measured_as, selected_per_row
from .session import ExplorerSession

ACTIONS = ("remove", "add")
EFFECT_COLUMNS = [
    "row",
    "intervention",
    "features measured",
    "activation before",
    "activation after",
    "judge before",
    "judge after",
    "what happened",
]


def concept_handle(
    session: ExplorerSession, concept: str | None, action: str, strength: float | None = None
) -> list[Intervention]:
    """The rows of one handle: ``remove`` is the bundle's default removal of ``concept``
    (``SaeBundle.unlearn``, one row per hook point of its kind); ``add`` is the bundle's add
    handle (``SaeBundle.add_concepts``): a ``PromptAdd``, every cross-attention block reads the
    prompt with ``concept`` written in, at ``strength`` (1: the rewritten prompt's own output; its
    range, (0, PROMPT_ADD_MAX], is checked where the ``PromptAdd`` is made)."""
    if not concept:
        raise SaeuronError("choose a concept first")
    if action not in ACTIONS:
        raise SaeuronError(f"a concept handle is {' or '.join(ACTIONS)}, got {action!r}")
    session.bundle.kind_of(concept)  # an unknown concept, by name
    if action == "remove":
        return list(session.bundle.unlearn([concept]))
    if strength is None or isinstance(strength, bool) or not isinstance(strength, (int, float)) or strength != strength:
        raise SaeuronError(f"enter a strength for adding {concept} (1: the prompt with {concept} written in)")
    return list(session.bundle.add_concepts([concept], float(strength)))


def default_removals(session: ExplorerSession) -> tuple[str, str]:
    """Which concepts "remove" reroutes and which it scales (``SaeBundle.unlearn`` of each with the
    defaults table): per kind, "styles" when every concept of the kind goes one way, else names."""
    bundle, rerouted, scaled = session.bundle, [], []
    for kind, point in bundle.point_of_kind.items():
        ways: dict[bool, list[str]] = {True: [], False: []}
        for concept in bundle.stats[point].concepts_of_kind(kind):
            try:
                ways[any(isinstance(iv, Reroute) for iv in bundle.unlearn([concept]))].append(concept)
            except SaeuronError:
                continue  # no default for this concept: "remove" refuses it, with that message
        for way, out in ((True, rerouted), (False, scaled)):
            if ways[way]:
                out.append(f"{kind}s" if not ways[not way] else ", ".join(ways[way]))
    return " and ".join(rerouted), " and ".join(scaled)


def anchor_text(iv: Reroute) -> str:
    """Where a Reroute moves its concepts: "solid", "solid/rings", "the nearest concept"."""
    anchors = (iv.anchor,) if isinstance(iv.anchor, str) else iv.anchor
    return "/".join("the nearest concept" if a == "nearest" else a for a in dict.fromkeys(anchors))


def describe(iv: Intervention) -> str:
    """One line naming an intervention as the table shows it."""
    if isinstance(iv, Unlearn):
        return f"remove {'+'.join(iv.concepts)} at {iv.point}"
    if isinstance(iv, Reroute):
        return f"remove {'+'.join(iv.concepts)} at {iv.point} (rerouted to {anchor_text(iv)})"
    if isinstance(iv, PromptAdd):
        where = f" at {len(iv.blocks)} block{'s' if len(iv.blocks) > 1 else ''}" if iv.blocks else ""
        return f"add {'+'.join(iv.concepts)}: prompt rewritten{where}, strength {sig3(iv.strength)}"
    if isinstance(iv, AddConcept):
        return f"add {'+'.join(iv.concepts)} at {iv.point} ({sig3(iv.strength)}x, latents steered in)"
    features = ", ".join(str(f) for f in iv.features)
    if isinstance(iv, ScaleFeatures):
        return f"{'ablate' if iv.factor == 0 else f'scale x{sig3(iv.factor)}'} feature {features} at {iv.point}"
    return f"steer feature {features} at {iv.point}"


def checked_addition(
    session: ExplorerSession, current: list[Intervention], new: list[Intervention]
) -> tuple[list[Intervention], str]:
    """``current + new`` if the whole list passes the recipe's checks (caps, SAEs), and a line
    saying what was added where; else a ``SaeuronError`` naming the problem."""
    combined = check_interventions([*current, *new], session.bundle, session.limits, session.cross_attention_blocks)
    first = len(current) + 1
    rows = f"row {first}" if len(new) == 1 else f"rows {first}-{first + len(new) - 1}"
    return list(
        combined
    ), f"Added {rows} to the intervention table (Generate tab): {'; '.join(describe(iv) for iv in new)}."


# --------------------------------------------------------------------------- what each row did
@dataclass(frozen=True)
class RowEffect:
    row: int
    intervention: str
    features: int
    """Distinct latents the row edits over its steps (a PromptAdd edits none: its concepts'
    selected latents, which it is measured by)."""
    before: float
    """Mean over the row's steps and the image's tokens of the summed activation of its latents,
    unedited image."""
    after: float
    """The same on the edited image (the block output after every edit, encoded again)."""
    judge_before: str
    judge_after: str
    explanation: str

    def cells(self) -> list:
        return [
            self.row,
            self.intervention,
            self.features,
            sig3(self.before),
            sig3(self.after),
            self.judge_before,
            self.judge_after,
            self.explanation,
        ]


def _latents_per_step(session: ExplorerSession, iv: Intervention, timesteps: list) -> list[torch.Tensor | None]:
    """Per step of the generation, the latents ``iv`` edits there (a Reroute: the latents that
    detect its concepts; a PromptAdd: its concepts' selected latents, ``selection.measured_as``;
    None outside its window)."""
    if isinstance(iv, PromptAdd):
        iv = measured_as(session.bundle, iv)
    if isinstance(iv, (Unlearn, AddConcept, Reroute)):
        stats = session.bundle.concept_stats([iv])[iv.point]
        rows = selected_per_row(iv, stats)

        def pick(step):
            return rows[stats.row_for_timestep(step.timestep)]

    else:
        fixed = torch.tensor(iv.features, dtype=torch.long)

        def pick(step):
            return fixed

    return [pick(Step(t, i)) if iv.steps is None or iv.steps.contains(i) else None for i, t in enumerate(timesteps)]


def _activation(session: ExplorerSession, point: str, outputs: torch.Tensor, latents: list) -> float:
    """Mean over the steps with latents of the per-token summed code of those latents."""
    sae = session.bundle.saes[point]
    values = []
    for step, ids in enumerate(latents):
        if ids is None:
            continue
        if not len(ids):
            values.append(0.0)
            continue
        tokens = to_tokens(outputs[step : step + 1].to(sae.device, torch.float32)).reshape(-1, sae.d_in)
        top_acts, top_indices = sae.encode(tokens)
        hits = top_indices[:, :, None] == ids.to(top_indices.device)[None, None, :]
        values.append(float((hits * top_acts[:, :, None]).sum((1, 2)).mean()))
    return float(np.mean(values)) if values else 0.0


def _judged(session: ExplorerSession, images: np.ndarray) -> dict | None:
    return None if session.judge is None else session.judge.classify(images)


def _concept_verdict(
    session: ExplorerSession, verdict: dict | None, index: int, concept: str
) -> tuple[str, bool | None]:
    if verdict is None:
        return "no judge", None
    kind = session.bundle.kind_of(concept)
    try:
        p = float(session.judge.probability(verdict, concept)[index])
    except SaeuronError:
        return f"judge does not know {concept}", None
    seen = verdict[kind][index] == concept
    return f"{'sees' if seen else 'does not see'} {concept} (p={p:.2f}); sees {verdict[kind][index]}", seen


def _overall(verdict: dict | None, index: int) -> str:
    if verdict is None:
        return "no judge"
    return (
        f"{verdict['object'][index]} ({verdict['object_conf'][index]:.2f}), "
        f"{verdict['style'][index]} ({verdict['style_conf'][index]:.2f})"
    )


def _moved(before: float, after: float) -> str | None:
    """How the activation moved ("activation down 40%"); None when it stayed within 5%."""
    change = after - before
    if abs(change) <= 0.05 * max(abs(before), 1e-6) or abs(change) < 1e-4:
        return None
    if before > 1e-6:
        return f"activation {'down' if change < 0 else 'up'} {abs(change) / max(abs(before), 1e-6):.0%}"
    return f"activation up from 0 to {sig3(after)}"


def _removal_verdict(seen_before: bool, seen_after: bool) -> str:
    if seen_before and not seen_after:
        return "; removed: the judge no longer sees it"
    return "; the judge still sees it" if seen_after else "; the judge did not see it before either"


def _explain(iv: Intervention, before: float, after: float, seen_before: bool | None, seen_after: bool | None) -> str:
    moved = _moved(before, after)
    if moved is None:
        if isinstance(iv, (ScaleFeatures, Unlearn)) and before < 1e-3:
            return "nothing changed: the edited features do not fire in this image, so there was nothing to scale"
        return "nothing changed: the edited features' activation is the same after the edit"
    if seen_before is None:
        return moved + "; no judge on this model"
    if isinstance(iv, Unlearn):
        return moved + _removal_verdict(seen_before, seen_after)
    if isinstance(iv, AddConcept):
        return moved + _added_verdict(seen_before, seen_after)
    return moved


def _added_verdict(seen_before: bool, seen_after: bool, stronger: bool = True) -> str:
    """``stronger``: whether a larger strength could add more (not when nothing was rewritten)."""
    if seen_after and not seen_before:
        return "; added: the judge now sees it"
    if seen_before:
        return "; the judge already saw it"
    return "; the judge does not see it yet (try a larger strength)" if stronger else "; the judge does not see it"


def prompt_read(session: ExplorerSession, iv: PromptAdd, prompt: str) -> tuple[str, str]:
    """(``prompt`` as the text encoder's token ids give it back, that prompt with ``iv``'s
    concepts written in): what the conditional row's cross-attention reads under ``iv``, made
    as the library makes it (the pipeline's tokenization, ``PromptAddEdit.written``), the
    ``PromptAddEdit.texts`` of a generation of ``prompt``."""
    read = read_back(session, prompt)
    kinds = {c: session.bundle.kind_of(c) for c in iv.concepts}
    return read, PromptAddEdit(iv, session.pipe, kinds, session.bundle.vocabulary).written(read)


def read_back(session: ExplorerSession, prompt: str) -> str:
    """``prompt`` as the hooks read it back from the text encoder's token ids (lower case, cut at
    the encoder's length)."""
    return session.pipe.tokenizer.decode(token_ids(session.pipe, [prompt])[0], skip_special_tokens=True)


def asked_elsewhere(session: ExplorerSession, iv: Reroute, prompt: str) -> list[str]:
    """The concepts of ``iv`` that a heeding Reroute leaves alone on ``prompt``: it names another
    concept of their kind and not them (``Reroute.heed_prompt``)."""
    if not iv.heed_prompt:
        return []
    read, bundle = read_back(session, prompt), session.bundle
    return [c for c in iv.concepts if names_another(read, bundle.kind_of(c), c, bundle.vocabulary)]


def _explain_prompt_add(
    iv: PromptAdd,
    texts: tuple[str, str],
    before: float,
    after: float,
    seen_before: bool | None,
    seen_after: bool | None,
    unmeasured: str | None,
) -> str:
    """Which prompt the cross-attention blocks read (or that the prompt names the concepts
    already, so nothing was rewritten), then how the concepts' selected features and the judge
    moved."""
    read, written = texts
    if read == written:
        text = f'nothing rewritten: the prompt already names {" and ".join(iv.concepts)} (read as "{read}")'
    else:
        blocks = f"{len(iv.blocks)} cross-attention block{'s' if len(iv.blocks) > 1 else ''}" if iv.blocks else ""
        text = f'read as "{written}"' + (f" by {blocks}" if blocks else " by every cross-attention block")
    if unmeasured is not None:
        text += f"; {unmeasured}"
    else:
        moved = _moved(before, after)
        text += f"; its selected features' {moved}" if moved else "; its selected features' activation about the same"
    if seen_before is None:
        return text + "; no judge on this model"
    return text + _added_verdict(seen_before, seen_after, stronger=read != written)


def _explain_reroute(
    iv: Reroute,
    found: list[Detection],
    before: float,
    after: float,
    seen_before: bool | None,
    seen_after: bool | None,
    alone: bool,
    image_changed: bool,
    asked: list[str] = (),
) -> str:
    """A Reroute changes nothing until its flag latents detect a concept: say whether and from
    which step they did (exact while it is the recipe's only row: until the first detection the
    edited generation is the unedited one), then how its flag latents and the judge moved.
    ``asked``: its concepts left alone because the prompt asks for another of their kind."""
    heeded = (
        f"{' and '.join(asked)} left alone: the prompt names another of its kind, so a detection there is taken "
        "for a false alarm (heed_prompt)"
        if asked
        else ""
    )
    found = [d for d in found if d.concept not in asked]
    if not found:
        return f"nothing rerouted: {heeded}"
    where = "" if alone else " in the unedited generation"
    missed = [d for d in found if d.step is None]
    not_seen = "; ".join(
        f"{d.concept} not detected{where} (its selected features flagged {percent(d.peak)} of the tokens at most, "
        f"running mean; detect {percent(iv.detect)})"
        for d in missed
    )
    if len(missed) == len(found):
        return f"nothing rerouted: {not_seen}" + (f"; {heeded}" if heeded else "")
    seen = ", ".join(f"{d.concept} detected at step {d.step}{where}" for d in found if d.step is not None)
    text = f"{seen}: rerouted to {anchor_text(iv)}" + (f"; {heeded}" if heeded else "")
    if alone and not image_changed:  # e.g. no word to move and no token flagged where it was found
        return text + ", but rerouting changed nothing in the image" + (f"; {not_seen}" if missed else "")
    text += f"; {not_seen}" if missed else ""
    moved = _moved(before, after)
    text += f"; its selected features' {moved}" if moved else "; its selected features' activation about the same"
    if seen_before is None:
        return text + "; no judge on this model"
    return text + _removal_verdict(seen_before, seen_after)


@torch.inference_mode()
def row_effects(session: ExplorerSession, recipe: CheckedRecipe) -> tuple[list[RowEffect], str]:
    """What each intervention of ``recipe`` did (one row each) and the judge's overall verdict on
    the unedited and the edited image (one line)."""
    recipe = session.complete(recipe)
    if not recipe.interventions:
        return [], "No interventions: nothing to compare."
    points = list(dict.fromkeys(iv.point for iv in recipe.interventions))
    before_image, before_maps, timesteps = session.captured_image(
        recipe.prompt, recipe.seed, recipe.steps, recipe.guidance, points
    )
    after_image, after_maps, _ = session.captured_image(
        recipe.prompt, recipe.seed, recipe.steps, recipe.guidance, points, recipe.interventions
    )
    verdict = _judged(session, np.stack([before_image, after_image]))
    rows = []
    for number, iv in enumerate(recipe.interventions, 1):
        unmeasured = None
        try:
            latents = _latents_per_step(session, iv, timesteps)
        except SaeuronError as e:
            if not isinstance(iv, PromptAdd):
                raise
            # a concept the defaults table has no tau for: the add runs, its latents are not known
            unmeasured, latents = f"its features are not measured ({e})", [None] * len(timesteps)
        used = [ids for ids in latents if ids is not None]
        distinct = len(torch.cat(used).unique()) if used else 0
        before = _activation(session, iv.point, before_maps[iv.point], latents)
        after = _activation(session, iv.point, after_maps[iv.point], latents)
        if isinstance(iv, (Unlearn, AddConcept, Reroute, PromptAdd)):
            (judge_before, seen_before), (judge_after, seen_after) = (
                _concept_verdict(session, verdict, i, iv.concepts[0]) for i in (0, 1)
            )
        else:
            judge_before, judge_after, seen_before, seen_after = _overall(verdict, 0), _overall(verdict, 1), None, None
            if verdict is not None:
                seen_before = seen_after = False  # a verdict exists; feature rows have no concept of their own
        rows.append(
            RowEffect(
                number,
                describe(iv),
                distinct,
                before,
                after,
                judge_before,
                judge_after,
                _explain_reroute(
                    iv,
                    detections(
                        iv,
                        session.bundle.saes[iv.point],
                        session.bundle.concept_stats([iv])[iv.point],
                        before_maps[iv.point],
                        timesteps,
                    ),
                    before,
                    after,
                    seen_before,
                    seen_after,
                    alone=len(recipe.interventions) == 1,
                    image_changed=not np.array_equal(before_image, after_image),
                    asked=asked_elsewhere(session, iv, recipe.prompt),
                )
                if isinstance(iv, Reroute)
                else _explain_prompt_add(
                    iv, prompt_read(session, iv, recipe.prompt), before, after, seen_before, seen_after, unmeasured
                )
                if isinstance(iv, PromptAdd)
                else _explain(iv, before, after, seen_before, seen_after),
            )
        )
    overall = (
        f"Judge: unedited image {_overall(verdict, 0)}; edited image {_overall(verdict, 1)}."
        if verdict is not None
        else "This model has no judge: activations only."
    )
    return rows, overall
