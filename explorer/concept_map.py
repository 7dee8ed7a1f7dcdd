"""The concept map: where each concept kind enters the U-Net, a block x kind table of numbers
(e.g. from ``saeuron locate``), shown as a heatmap.

The table is a JSON file ``{"blocks": [...], "kinds": [...], "values": [[...]], "metric": "..."}``
with one row of ``values`` per block and one column per kind (``metric``, optional, says what the
numbers are). The app finds it at the path given by ``"concept_map"`` in the model folder's
``saeuron.json`` (relative to that folder), else as ``concept_map.json`` in the model folder, or
where ``--concept-map`` says; without one the tab is not shown.

The ``locate.json`` written by ``saeuron locate`` is read too (recognised by its per-kind
``per_block`` entries): each kind's column is, when the locate run had a judge, the share of
images the judge finds showing the concept when only that block reads the right word ("right
here": the block is sufficient); without a judge, the image change when only that block reads
the swapped word, as a share of swapping it everywhere ("wrong here": the block is necessary)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from saeuron_core.errors import SaeuronError
from saeuron_core.pipeline import INFO_FILE

FILE = "concept_map.json"


@dataclass(frozen=True)
class ConceptMap:
    blocks: tuple[str, ...]
    kinds: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]
    """[block][kind]; NaN where a cell was not measured."""
    metric: str = ""
    source: str = ""
    """The file it was read from."""
    label: str = ""
    """A short name of the metric for the chart (default: ``metric``)."""

    @property
    def short_metric(self) -> str:
        return self.label or self.metric or "value"

    def strongest_block(self, kind: str) -> str:
        """The block with the largest value for ``kind``."""
        column = self.kinds.index(kind)
        scored = [(v[column], b) for b, v in zip(self.blocks, self.values) if not math.isnan(v[column])]
        if not scored:
            raise SaeuronError(f"the concept map has no values for {kind!r}")
        return max(scored)[1]


def load_concept_map(path: str | Path) -> ConceptMap:
    """Read and check a concept map file (one clear error naming what is wrong)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise SaeuronError(f"cannot read the concept map {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise SaeuronError(f"the concept map {path} is not valid JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("kinds"), dict) and "values" not in data:
        data = from_locate(data, path)
    if not isinstance(data, dict) or not {"blocks", "kinds", "values"} <= set(data):
        raise SaeuronError(f'the concept map {path} needs "blocks", "kinds" and "values"')
    blocks, kinds, values = data["blocks"], data["kinds"], data["values"]
    if not (isinstance(blocks, list) and blocks and all(isinstance(b, str) for b in blocks)):
        raise SaeuronError(f'the concept map {path}: "blocks" must be a non-empty list of block names')
    if not (isinstance(kinds, list) and kinds and all(isinstance(k, str) for k in kinds)):
        raise SaeuronError(f'the concept map {path}: "kinds" must be a non-empty list of concept kinds')
    if not (
        isinstance(values, list)
        and len(values) == len(blocks)
        and all(isinstance(r, list) and len(r) == len(kinds) for r in values)
    ):
        raise SaeuronError(
            f'the concept map {path}: "values" must have one row per block ({len(blocks)}) '
            f"and one column per kind ({len(kinds)})"
        )
    try:
        table = tuple(tuple(float("nan") if v is None else float(v) for v in row) for row in values)
    except (TypeError, ValueError):
        raise SaeuronError(f'the concept map {path}: "values" must be numbers (or null)') from None
    return ConceptMap(
        tuple(blocks), tuple(kinds), table, str(data.get("metric") or ""), str(path), str(data.get("label") or "")
    )


def find_concept_map(model_folder: str | Path | None, given: str | Path | None = None) -> ConceptMap | None:
    """The concept map given, else the one the model folder names or holds; None when there is none."""
    if given:
        return load_concept_map(given)
    if model_folder is None or not Path(model_folder).is_dir():
        return None
    folder = Path(model_folder)
    info_file = folder / INFO_FILE
    named = json.loads(info_file.read_text()).get("concept_map") if info_file.is_file() else None
    if named:
        return load_concept_map(folder / named)
    return load_concept_map(folder / FILE) if (folder / FILE).is_file() else None


def from_locate(result: dict, path: Path) -> dict:
    """The block x kind table of a ``saeuron locate`` result (see the module docstring)."""
    blocks, kinds = result.get("blocks"), result["kinds"]
    if not isinstance(blocks, list) or not kinds:
        raise SaeuronError(f'the locate result {path} needs "blocks" and at least one kind')
    judged = bool(result.get("judged"))
    condition, field = ("right_here", "shows") if judged else ("wrong_here", "image_change")
    values = []
    for block in blocks:
        row = []
        for kind, entry in kinds.items():
            try:
                row.append(entry["per_block"][block][condition][field])
            except (KeyError, TypeError):
                raise SaeuronError(
                    f"the locate result {path} has no {condition} {field} for {kind!r} at {block}"
                ) from None
        values.append(row)
    cases = ", ".join(f"{k}: {e.get('cases', '?')} prompt pairs" for k, e in kinds.items())
    if judged:
        metric = (
            "saeuron locate, judged: share of images showing the concept "
            f"when only this block reads the right word ({cases})"
        )
    else:
        metric = (
            "saeuron locate, no judge: image change when only this block reads the swapped word, "
            f"as a share of swapping it everywhere ({cases})"
        )
    label = (
        "share showing the concept (right word only here)" if judged else "image change share (swapped word only here)"
    )
    return {"blocks": blocks, "kinds": list(kinds), "values": values, "metric": metric, "label": label}
