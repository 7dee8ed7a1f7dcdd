"""What every panel works with: the session and the logic objects built on it."""

from __future__ import annotations

from dataclasses import dataclass

from .editing import Editor
from .features import FeatureExplorer
from .session import ExplorerSession
from .unlearn_grid import UnlearnAudit


@dataclass(frozen=True)
class Explorer:
    session: ExplorerSession
    features: FeatureExplorer
    editor: Editor
    audit: UnlearnAudit

    @classmethod
    def build(cls, session: ExplorerSession, map_cache_dir=None) -> "Explorer":
        features = FeatureExplorer(session, map_cache_dir)
        return cls(session, features, Editor(session, features), UnlearnAudit(session))
