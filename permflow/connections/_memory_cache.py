"""A bounded in-process store for cached step results: an LRU with expiry.

Used by ``InMemoryPubSubConnection`` and, as the default of the connection
protocol, by any connection that does not store cached results itself.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from .._errors import ConfigError

__all__ = ["DEFAULT_CACHE_SIZE", "MemoryCache"]

#: Entries an in-memory cache keeps before it forgets the least recently used.
DEFAULT_CACHE_SIZE = 10_000


class MemoryCache:
    """At most ``size`` entries ``(name, key) -> bytes``; reading or writing an
    entry makes it the most recently used, and storing one more than ``size``
    forgets the least recently used. An entry stored with a ``ttl`` is gone
    once ``clock()`` has advanced by ``ttl`` seconds. Safe to share between
    threads and event loops."""

    def __init__(
        self, size: int = DEFAULT_CACHE_SIZE, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"cache_size must be an integer of at least 1, got {size!r}")
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[bytes, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, key: str) -> bytes | None:
        """The entry, or None if there is none or it expired."""
        with self._lock:
            entry = self._entries.get((name, key))
            if entry is None:
                return None
            value, expires = entry
            if expires is not None and self.clock() >= expires:
                del self._entries[(name, key)]
                return None
            self._entries.move_to_end((name, key))
            return value

    def set(self, name: str, key: str, value: bytes, ttl: float | None) -> None:
        """Store ``value``, replacing any entry of the same name and key."""
        expires = None if ttl is None else self.clock() + ttl
        with self._lock:
            self._entries[(name, key)] = (value, expires)
            self._entries.move_to_end((name, key))
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self, name: str | None = None) -> None:
        """Forget the entries of ``name``, or every entry."""
        with self._lock:
            if name is None:
                self._entries.clear()
                return
            for entry in [e for e in self._entries if e[0] == name]:
                del self._entries[entry]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
