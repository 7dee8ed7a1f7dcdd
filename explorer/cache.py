"""A small bounded cache shared by the session (images, removals) and the editor (captures)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from saeuron_core.errors import SaeuronError


class LruCache:
    """A thread-safe mapping that keeps the ``capacity`` most recently used entries."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise SaeuronError(f"cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return self._entries[key]

    def put(self, key, value) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
