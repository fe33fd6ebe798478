"""Conformance suite for connections, and switches for testing with permflow.

Any connection must pass the same suite. Subclass ``ConnectionSuite`` in a
test module and provide an async ``connection`` fixture (and, for stores that
only work on asyncio, an ``anyio_backend`` fixture returning ``"asyncio"``)::

    class TestMyConnection(ConnectionSuite):
        @pytest.fixture
        async def connection(self):
            async with MyConnection(...) as conn:
                yield conn

Requires pytest and anyio's pytest plugin. ``set_retry_waits(False)`` turns
retry back-off waits to zero for fast tests.
"""

from __future__ import annotations

import pytest

from ._retry import set_retry_waits
from ._suite_protocol import ProtocolSuite
from ._suite_runs import RunSuite
from .connections._base import PubSubConnection

__all__ = ["ConnectionSuite", "ProtocolSuite", "RunSuite", "set_retry_waits"]


class ConnectionSuite(ProtocolSuite, RunSuite):
    """What every connection must do. Subclasses provide ``connection``."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def connection(self) -> PubSubConnection:  # pragma: no cover - overridden
        raise NotImplementedError("provide a `connection` fixture")
