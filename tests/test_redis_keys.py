"""Every Lua script of the Redis connection declares every key it touches.

The conformance suite runs with each script wrapped in a checker: a command
inside a script naming a key under the test's prefix that is not among the
script's KEYS fails the script (and so the test), even inside a ``pcall``. A
ttl makes every script refresh the expiry of every key of its run, the widest
set of keys a script touches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from permflow import PubSubConnection, RedisPubSubConnection
from permflow.connections.redis import _client
from permflow.testing import ConnectionSuite

_CHECKER = """
local __real, __declared, __undeclared = redis, {}, nil
for _, k in ipairs(KEYS) do __declared[k] = true end
local function __check(...)
  for i, a in ipairs({...}) do
    if i > 1 and type(a) == 'string' and string.sub(a, 1, #ARGV_PREFIX) == ARGV_PREFIX
       and not __declared[a] then
      __undeclared = __undeclared or a
    end
  end
end
local redis = setmetatable({
  call = function(...) __check(...); return __real.call(...) end,
  pcall = function(...) __check(...); return __real.pcall(...) end,
}, {__index = __real})
local function __body()
"""

_CHECKED_END = """
end
local __reply = __body()
if __undeclared then return __real.error_reply('UNDECLARED key ' .. __undeclared) end
return __reply
"""


def checked(source: str, prefix: str) -> str:
    """``source`` failing whenever it touched an undeclared key starting with ``{prefix``."""
    head = _CHECKER.replace("ARGV_PREFIX", repr("{" + prefix))
    return head + source + _CHECKED_END


@pytest.fixture
def checked_scripts(redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    scripts = {name: checked(source, redis_prefix) for name, source in _client._SCRIPTS.items()}
    monkeypatch.setattr(_client, "_SCRIPTS", scripts)
    yield


class TestScriptsDeclareTheirKeys(ConnectionSuite):
    """The conformance suite with ttl, on scripts that fail on an undeclared key."""

    ttl: float | None = 600

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def connection(
        self, redis_url: str, redis_prefix: str, checked_scripts: None
    ) -> AsyncIterator[PubSubConnection]:
        made = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, lease=5.0, ttl=self.ttl)
        async with made as conn:
            yield conn

    @pytest.fixture
    async def lease_connection(
        self, redis_url: str, redis_prefix: str, checked_scripts: None
    ) -> AsyncIterator[PubSubConnection]:
        made = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, lease=0.5, ttl=self.ttl)
        async with made as conn:
            yield conn


class TestScriptsDeclareTheirKeysWithoutTtl(TestScriptsDeclareTheirKeys):
    """The same without ttl: a run deleted at its end then declares only the topics each
    commit touches."""

    ttl = None


async def test_the_checker_catches_an_undeclared_key(redis_url: str, redis_prefix: str) -> None:
    """A script touching a key it did not declare fails under the checker (the check is real)."""
    import redis.asyncio
    import redis.exceptions

    client = redis.asyncio.Redis.from_url(redis_url)
    log = f"{{{redis_prefix}:s}}:log"
    try:
        undeclared = checked("redis.call('SET', KEYS[1] .. ':other', 1) return 1", redis_prefix)
        with pytest.raises(redis.exceptions.ResponseError, match="UNDECLARED key"):
            await client.eval(undeclared, 1, log)
        assert await client.eval(checked("return redis.call('SET', KEYS[1], 1)", redis_prefix), 1, log)
    finally:
        await client.delete(log, f"{log}:other")
        await client.aclose()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio
