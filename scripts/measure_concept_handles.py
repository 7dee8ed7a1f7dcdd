"""Concept handles on the bundled model: does "remove CONCEPT" (the bundle's default removal,
SaeBundle.unlearn) make the judge stop seeing it with the other concept kept, and does
"add CONCEPT" (SaeBundle.add_concepts) make it appear? The results in results/concept_handles/ were
measured when add_concepts steered the selected latents in; it now returns a PromptAdd (the
prompt with the concept written in, strength 1 = the rewritten prompt), measured by
`saeuron evaluate --control --control-handles-only` and scripts/add_candidates.py.

usage: PYTHONPATH=. python scripts/measure_concept_handles.py SPLIT N_SEEDS STRENGTHS OUT.json [concepts...]
(writes OUT.json and, beside it, the unedited / edited images as OUT.json.CONCEPT.remove.npy, .addS.npy).
The default add strength (2x) was chosen on the "sweep" split (2 seeds, 0.5 / 1 / 2x), then measured
on held-out seeds: `heldout 6 2 results/concept_handles/heldout.json dots stripes star heart`.
"removed" counts every prompt of the concept (also those where the judge did not see it unedited).
"""

import json
import sys
import time

import numpy as np
import torch

torch.set_num_threads(1)
from explorer.session import ExplorerSession  # noqa: E402
from saeuron_core.intervals import Rate  # noqa: E402
from saeuron_core.interventions import apply_interventions  # noqa: E402
from saeuron_core.minicanvas import dataset as mc  # noqa: E402
from saeuron_core.minicanvas.control import steer_pairs  # noqa: E402
from saeuron_core.minicanvas.evaluation import judge_decorrelated  # noqa: E402

split, n, strengths, out = sys.argv[1], int(sys.argv[2]), [float(s) for s in sys.argv[3].split(",")], sys.argv[4]
concepts = sys.argv[5:] or ["dots", "stripes", "star", "heart"]
s = ExplorerSession.open("minicanvas")
pipe, bundle, judge = s.pipe, s.bundle, s.judge
steps, guidance = s.info.default_steps, s.info.default_guidance
bases = mc.split_seeds(split, n)


def run(interventions, pairs):
    if not interventions:
        return judge_decorrelated(pipe, judge, pairs, bases, steps, guidance)
    with (
        torch.inference_mode(),
        apply_interventions(pipe.unet, bundle.saes, interventions, stats=bundle.concept_stats(interventions)),
    ):
        return judge_decorrelated(pipe, judge, pairs, bases, steps, guidance)


def seen(r, concept):
    return (r.predicted_style if mc.concept_kind(concept) == "style" else r.predicted_object) == concept


def other_kept(r, concept):
    return (
        r.predicted_object == r.object_name
        if mc.concept_kind(concept) == "style"
        else (r.style is None or r.predicted_style == r.style)
    )


results = {}
for concept in concepts:
    t = time.time()
    kind = mc.concept_kind(concept)
    row = {}
    remove_pairs = [(o, concept) for o in mc.OBJECTS] if kind == "style" else [(concept, st) for st in mc.STYLES]
    base, _, base_img = run([], remove_pairs)
    rem, _, rem_img = run(bundle.unlearn([concept]), remove_pairs)
    row["remove"] = {
        "before_seen": Rate(sum(seen(r, concept) for r in base), len(base)).as_dict(),
        "removed": Rate(sum(not seen(r, concept) for r in rem), len(rem)).as_dict(),
        "kept": Rate(sum(other_kept(r, concept) for r in rem), len(rem)).as_dict(),
        "kept_before": Rate(sum(other_kept(r, concept) for r in base), len(base)).as_dict(),
    }
    np.save(f"{out}.{concept}.remove.npy", np.stack([base_img, rem_img]))
    add_pairs = steer_pairs(concept)
    base, _, base_img = run([], add_pairs)
    row["add"] = {"before_seen": Rate(sum(seen(r, concept) for r in base), len(base)).as_dict()}
    for strength in strengths:
        add, _, add_img = run(bundle.add_concepts([concept], strength), add_pairs)
        row["add"][f"{strength:g}"] = {
            "seen": Rate(sum(seen(r, concept) for r in add), len(add)).as_dict(),
            "other_kept": Rate(sum(other_kept(r, concept) for r in add), len(add)).as_dict(),
        }
        np.save(f"{out}.{concept}.add{strength:g}.npy", np.stack([base_img, add_img]))
    row["seconds"] = time.time() - t
    results[concept] = row
    print(concept, json.dumps(row), flush=True)
    json.dump(
        {
            "split": split,
            "bases": bases,
            "strengths": strengths,
            "steps": steps,
            "guidance": guidance,
            "results": results,
        },
        open(out, "w"),
        indent=1,
    )
