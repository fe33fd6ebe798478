"""Every connection passes the same conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from permflow import InMemoryPubSubConnection
from permflow.testing import ConnectionSuite


class TestInMemoryConnection(ConnectionSuite):
    @pytest.fixture
    async def connection(self) -> AsyncIterator[InMemoryPubSubConnection]:
        async with InMemoryPubSubConnection() as conn:
            yield conn
