"""Redis floors: the commands one hop needs, done by hand with redis-py asyncio.

A hop acks the message it was handed, appends its result to the next stream
and takes the next message through a consumer group (at-least-once delivery).
Two ways of doing it by hand:

* ``script_hop_chain`` — the least a hop can cost: one Lua script per hop
  (``HOP``: XACK the delivered entry, XADD the next message, XREADGROUP the
  next one), sent with EVALSHA: **one round trip** per hop, as permflow's own
  commit does. A chain of n hops costs n + 1 round trips: the first call only
  adds and reads the input, the last adds the output without reading it.
* ``hop_chain`` — XREADGROUP, then XACK + XADD in one MULTI/EXEC pipeline:
  **two round trips** per hop.

``ping`` is the bare round trip: one PING. All of them go through redis-py's
ordinary asyncio client, as any user of it would.
"""

from __future__ import annotations

from typing import Any

from .._pipeline import Pipeline
from ._redis_common import connect, delete_prefix, unique_prefix

GROUP = "bench"
CONSUMER = "c1"

#: KEYS: the stream of the delivered entry, the next stream. ARGV: group,
#: consumer, delivered entry id ('' for none), value to add, '1' to read the
#: next entry (else the added one is returned as is). Returns {id, value}.
HOP = """
if ARGV[3] ~= '' then redis.call('XACK', KEYS[1], ARGV[1], ARGV[3]) end
local id = redis.call('XADD', KEYS[2], '*', 'v', ARGV[4])
if ARGV[5] ~= '1' then return {id, ARGV[4]} end
local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[2], '>')
local entry = got[1][2][1]
return {entry[1], entry[2][2]}
"""


class System:
    family = "redis"

    def __init__(self) -> None:
        self.prefix = unique_prefix()
        self.client: Any = None
        self._streams = 0

    def versions(self) -> dict[str, str]:
        import redis

        return {"redis-py": redis.__version__, "redis-server": self._server}

    async def start(self) -> None:
        self.client = await connect()
        self._server = (await self.client.info("server"))["redis_version"]

    async def stop(self) -> None:
        await delete_prefix(self.client, self.prefix)
        await self.client.aclose()

    async def _streams_with_groups(self, n: int) -> list[str]:
        self._streams += 1
        names = [f"{self.prefix}:{self._streams}:s{k}" for k in range(n + 1)]
        for name in names:
            await self.client.xgroup_create(name, GROUP, id="$", mkstream=True)
        return names

    async def ping(self) -> Pipeline:
        client = self.client

        async def run(x: int) -> bool:
            return bool(await client.ping())

        return Pipeline(run, lambda x: True, is_async=True)

    async def hop_chain(self, n: int) -> Pipeline:
        client = self.client
        streams = await self._streams_with_groups(n)

        async def run(x: int) -> int:
            await client.xadd(streams[0], {"v": x})
            for k in range(n):
                [[_, [(entry_id, fields)]]] = await client.xreadgroup(
                    GROUP, CONSUMER, {streams[k]: ">"}, count=1
                )
                pipe = client.pipeline(transaction=True)
                pipe.xack(streams[k], GROUP, entry_id)
                pipe.xadd(streams[k + 1], {"v": int(fields[b"v"]) + 1})
                await pipe.execute()
            [[_, [(entry_id, fields)]]] = await client.xreadgroup(GROUP, CONSUMER, {streams[n]: ">"}, count=1)
            await client.xack(streams[n], GROUP, entry_id)
            return int(fields[b"v"])

        return Pipeline(run, lambda x: x + n, is_async=True, note="2 round trips per hop")

    async def script_hop_chain(self, n: int) -> Pipeline:
        """One input through ``n`` hops, one EVALSHA (one round trip) per hop."""
        hop = self.client.register_script(HOP)
        streams = await self._streams_with_groups(n)

        async def run(x: int) -> int:
            entry_id, value = await hop(keys=[streams[0], streams[0]], args=[GROUP, CONSUMER, "", x, 1])
            for k in range(n):
                last = k == n - 1
                args = [GROUP, CONSUMER, entry_id, int(value) + 1, 0 if last else 1]
                entry_id, value = await hop(keys=[streams[k], streams[k + 1]], args=args)
            return int(value)

        note = f"{n + 1} round trips per {n} hops"
        return Pipeline(run, lambda x: x + n, is_async=True, note=note)

    async def batch_hops(self, batch: int, hops: int) -> Pipeline:
        """One run: ``batch`` messages go through ``hops`` streams, a whole batch per hop."""
        client = self.client
        streams = await self._streams_with_groups(hops)

        async def run(x: int) -> int:
            pipe = client.pipeline(transaction=False)
            for i in range(batch):
                pipe.xadd(streams[0], {"v": x + i})
            await pipe.execute()
            for k in range(hops):
                [[_, entries]] = await client.xreadgroup(GROUP, CONSUMER, {streams[k]: ">"}, count=batch)
                pipe = client.pipeline(transaction=True)
                pipe.xack(streams[k], GROUP, *(entry_id for entry_id, _ in entries))
                for _, fields in entries:
                    pipe.xadd(streams[k + 1], {"v": int(fields[b"v"]) + 1})
                await pipe.execute()
            [[_, entries]] = await client.xreadgroup(GROUP, CONSUMER, {streams[hops]: ">"}, count=batch)
            await client.xack(streams[hops], GROUP, *(entry_id for entry_id, _ in entries))
            total = sum(int(fields[b"v"]) for _, fields in entries)
            for name in streams:  # keep the streams short between rounds
                await client.xtrim(name, maxlen=0)
            return total

        expected = lambda x: sum(x + i + hops for i in range(batch))  # noqa: E731
        return Pipeline(run, expected, is_async=True, note=f"{batch:,} messages per hop")
