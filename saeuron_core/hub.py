"""Where SAE folders come from: a local folder, or a Hugging Face hub id read through the HF cache.

``--sae`` is a folder with one subfolder per hook point, or a hub id ``org/name`` (the repo's
root holds the hook-point folders) or ``org/name/sub/folder`` (they lie under that subfolder).
A hub id is fetched with ``huggingface_hub.snapshot_download``, only the files of the hook
points asked for, into the ordinary HF cache; later runs, offline ones included
(``HF_HUB_OFFLINE=1``), read that cache.

Hook-point folders may carry the paper's ``unet.`` prefix (``unet.up_blocks.1.attentions.1``):
``point_folder`` accepts either spelling, so the paper's released SAEs load as they are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import SaeuronError
from .hooks import normalize_point

CONFIG_FILE = "cfg.json"
_HUB_SAE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)*$")
_PREFIXES = ("", "unet.")


def point_folder(root: str | Path, point: str) -> Path | None:
    """The subfolder of ``root`` holding ``point``'s files, named ``point`` or ``unet.<point>``
    (None when neither exists)."""
    root, point = Path(root), normalize_point(point)
    for prefix in _PREFIXES:
        folder = root / f"{prefix}{point}"
        if folder.is_dir():
            return folder
    return None


def folder_points(root: str | Path, marker: str = CONFIG_FILE) -> dict[str, Path]:
    """Every subfolder of ``root`` that holds ``marker``, keyed by its normalised hook point."""
    root = Path(root)
    found: dict[str, Path] = {}
    for folder in sorted(p for p in root.iterdir() if (p / marker).is_file()):
        point = normalize_point(folder.name)
        if point in found:
            raise SaeuronError(
                f"{root} holds two folders for hook point {point}: {found[point].name} and {folder.name}"
            )
        found[point] = folder
    return found


def is_hub_id(spec: str) -> bool:
    return bool(_HUB_SAE.match(spec)) and not spec.startswith((".", "/", "~"))


def offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or flag.strip().lower() in ("1", "true", "yes", "on")


def resolve_sae_dir(
    spec: str | Path, points: list[str] | tuple[str, ...] = (), cache_dir: str | Path | None = None
) -> Path:
    """A local folder holding SAE subfolders for ``spec`` (a folder or a hub id); for a hub id,
    only ``points``' folders are fetched (every folder when ``points`` is empty)."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SaeuronError(f"{spec} is not a folder of SAEs")
        return path
    if not is_hub_id(text):
        raise SaeuronError(f"no such SAE folder: {spec} (and not a hub id org/name[/subfolder])")
    org, name, *sub = text.split("/")
    repo, subfolder = f"{org}/{name}", "/".join(sub)
    base = f"{subfolder}/" if subfolder else ""
    if points:
        patterns = [f"{base}{prefix}{normalize_point(p)}/*" for p in points for prefix in _PREFIXES]
    else:
        patterns = [f"{base}*/{CONFIG_FILE}", f"{base}*/*.safetensors"]
    snapshot = _snapshot(repo, patterns, cache_dir)
    root = Path(snapshot) / subfolder
    missing = [p for p in points if point_folder(root, p) is None]
    if missing:
        where = "in the local Hugging Face cache (offline)" if offline() else "in the repo"
        raise SaeuronError(
            f"{spec}: no SAE for hook point(s) {', '.join(missing)} {where} (looked for <point>/ and unet.<point>/ "
            f"under {root})"
        )
    return root


def _snapshot(repo: str, patterns: list[str], cache_dir: str | Path | None) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    is_offline = offline()
    try:
        return snapshot_download(repo, allow_patterns=patterns, cache_dir=cache_dir, local_files_only=is_offline)
    except RepositoryNotFoundError:
        raise SaeuronError(
            f"SAE repo {repo} does not exist on the hub (or is private / gated: log in with `hf auth login`)"
        ) from None
    except LocalEntryNotFoundError:
        if is_offline:
            raise SaeuronError(
                f"no local folder {repo}/..., and SAE repo {repo} is not in the Hugging Face cache while the hub is "
                "offline (HF_HUB_OFFLINE=1); run once online or pass a local folder"
            ) from None
        raise SaeuronError(
            f"could not reach the hub to fetch SAE repo {repo}, and it is not cached; check the network or pass a "
            "local folder"
        ) from None
    except (HfHubHTTPError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SaeuronError(f"could not fetch SAE repo {repo}: {first}") from None
