"""Conformance suite for connections, and switches for testing with permflow.

Any connection must pass the same suite. Subclass ``ConnectionSuite`` in a
test module and provide an async ``connection`` fixture (and, for stores that
only work on asyncio, an ``anyio_backend`` fixture returning ``"asyncio"``)::

    class TestMyConnection(ConnectionSuite):
        @pytest.fixture
        async def connection(self):
            async with MyConnection(...) as conn:
                yield conn

A store with leases (a finite ``lease``) should also override the
``lease_connection`` fixture with a connection whose lease is short (under a
second): the lease tests wait for leases to run out.

Requires pytest and anyio's pytest plugin. ``set_retry_waits(False)`` turns
retry back-off waits to zero for fast tests.
"""

from __future__ import annotations

import pytest

from .._retry import set_retry_waits
from ..connections._base import PubSubConnection
from ._cache import CacheSuite
from ._filters import FilterSuite
from ._leases import LeaseSuite
from ._protocol import ProtocolSuite
from ._runs import RunSuite

__all__ = [
    "CacheSuite",
    "ConnectionSuite",
    "FilterSuite",
    "LeaseSuite",
    "ProtocolSuite",
    "RunSuite",
    "set_retry_waits",
]


class ConnectionSuite(ProtocolSuite, LeaseSuite, RunSuite, FilterSuite, CacheSuite):
    """What every connection must do. Subclasses provide ``connection``."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def connection(self) -> PubSubConnection:  # pragma: no cover - overridden
        raise NotImplementedError("provide a `connection` fixture")
