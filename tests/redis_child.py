"""A run in another OS process, for the cross-process Redis tests.

    python tests/redis_child.py URL PREFIX STATE_ID MODE

MODE ``finish`` runs "job" to the end and prints the OUT values as JSON;
``break`` leaves the stream once the slow step's input is stored and prints
BROKE; ``hang`` lets the slow step print STARTED and block until the process
is killed. The tests import ``build`` to run the same processes themselves.
"""

from __future__ import annotations

import asyncio
import json
import sys

import anyio

from permflow import PubSub, PubSubConnection, RedisPubSubConnection, Topic

WORK = Topic("work")
BLOCK = False
CALLS: list[str] = []


def prepare(x: str) -> str:
    return x + ":prepared"


async def slow(x: str) -> str:
    CALLS.append(x)
    if BLOCK:
        print("STARTED", flush=True)
        await anyio.sleep_forever()
    return x + ":done"


def build(connection: PubSubConnection) -> PubSub:
    return PubSub(
        Topic.IN.subscribe() | prepare | WORK.publish(),
        WORK.subscribe() | slow | Topic.OUT.publish(),
        connection=connection,
    )


async def main(url: str, prefix: str, state_id: str, mode: str) -> None:
    global BLOCK
    BLOCK = mode in ("break", "hang")
    async with RedisPubSubConnection.from_url(url, prefix=prefix) as conn:
        pubsub = build(conn)
        config = {"state_id": state_id}
        if mode == "finish":
            print(json.dumps(await pubsub.ainvoke("job", config)), flush=True)
        elif mode == "break":
            async with pubsub.astream("job", config) as stream:
                async for message in stream:
                    if message.topic == WORK.name:
                        break
            print("BROKE", flush=True)
        elif mode == "hang":
            await pubsub.ainvoke("job", config)
        else:
            raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
