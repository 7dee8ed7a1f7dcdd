"""What every panel works with: the session and the logic objects built on it."""

from __future__ import annotations

import logging
import threading
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

    def warm_up(self) -> threading.Thread:
        """Load a deferred pipeline, then compute the feature maps, in a background thread (the
        first page needs neither; a generation asked for meanwhile waits for the pipeline)."""

        def work():
            try:
                self.session.load_pipeline()
            except Exception:  # reported again, as an error, to the first request that needs it
                logging.getLogger("saeuron.explorer").exception("loading the pipeline failed")
            self.features.start_maps()

        thread = threading.Thread(target=work, name="warm-up", daemon=True)
        thread.start()
        return thread
