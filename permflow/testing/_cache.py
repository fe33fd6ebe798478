"""Conformance tests of cached step results: ``cache_get``, ``cache_set``, ``aclear_cache``.

The expiry test waits for a one-second ``ttl`` to pass in real time (polling
with a deadline): a store's own clock decides when an entry expires.
"""

from __future__ import annotations

import time

import anyio
import anyio.to_thread
import pytest

from ..connections._base import PubSubConnection
from ._protocol import BACKSTOP

__all__ = ["CacheSuite"]


class CacheSuite:
    """What every connection's cache of step results must do."""

    pytestmark = pytest.mark.anyio

    async def test_cache_returns_what_was_stored(self, connection: PubSubConnection) -> None:
        """An entry comes back byte for byte; another key or another name is a miss."""
        data = bytes(range(256))
        with anyio.fail_after(BACKSTOP):
            assert await connection.cache_get("step", "k1") is None
            await connection.cache_set("step", "k1", data, None)
            assert await connection.cache_get("step", "k1") == data
            assert await connection.cache_get("step", "k2") is None
            assert await connection.cache_get("other", "k1") is None

    async def test_cache_set_replaces_an_entry(self, connection: PubSubConnection) -> None:
        """Storing under the same name and key again replaces the entry."""
        with anyio.fail_after(BACKSTOP):
            await connection.cache_set("step", "k", b"old", None)
            await connection.cache_set("step", "k", b"new", None)
            assert await connection.cache_get("step", "k") == b"new"

    async def test_cache_entries_expire_after_their_ttl(self, connection: PubSubConnection) -> None:
        """An entry with a ttl is there at first and gone once the ttl passed; one without stays."""
        with anyio.fail_after(BACKSTOP):
            await connection.cache_set("step", "short", b"x", 1.0)
            await connection.cache_set("step", "forever", b"y", None)
            stored_at = time.monotonic()
            assert await connection.cache_get("step", "short") == b"x"
            for _ in range(int(BACKSTOP / 0.05)):  # polling the store's clock, up to a deadline
                if await connection.cache_get("step", "short") is None:
                    break
                await anyio.sleep(0.05)
            assert await connection.cache_get("step", "short") is None
            assert time.monotonic() - stored_at > 0.9
            assert await connection.cache_get("step", "forever") == b"y"

    async def test_clear_cache_of_one_name_keeps_the_others(self, connection: PubSubConnection) -> None:
        """clear_cache(name) forgets that step's entries only, even of names it is a prefix or pattern of."""
        names = ["a", "a:b", "ab", "a*", "a{x}", "b"]
        with anyio.fail_after(BACKSTOP):
            for name in names:
                await connection.cache_set(name, "k", name.encode(), None)
            await connection.aclear_cache("a")
            await connection.aclear_cache("a*")
            left = {name: await connection.cache_get(name, "k") for name in names}
        assert left == {"a": None, "a:b": b"a:b", "ab": b"ab", "a*": None, "a{x}": b"a{x}", "b": b"b"}

    async def test_clear_cache_without_a_name_forgets_every_entry(self, connection: PubSubConnection) -> None:
        """clear_cache() forgets the entries of every step, also through its sync twin."""
        with anyio.fail_after(BACKSTOP):
            for n in range(3):
                await connection.cache_set(f"step{n}", "k", b"v", None)
            await connection.aclear_cache()
            assert [await connection.cache_get(f"step{n}", "k") for n in range(3)] == [None] * 3
            await connection.cache_set("step0", "k", b"v", None)
            await anyio.to_thread.run_sync(connection.clear_cache, "step0")
            assert await connection.cache_get("step0", "k") is None
