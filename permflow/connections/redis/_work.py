"""Work distribution on the Redis connection: announce, claim, renew and finish
claims, failure and stop marks, and the inspection of the runs under a prefix.

Announcements are entries of ``WORK_SHARDS`` streams per prefix, read by the
consumer group "workers"; a state id is always announced on the same one (by a
hash of it), and a worker claims from all of them. Each stream has a hash tag
of its own, chosen so that their hash slots are spread evenly over the 16384
slots: on a Redis Cluster whose slots are split in ranges (as
``redis-cli --cluster create`` does) they sit on different primaries, so no node
carries all the announcements. A claim is an entry pending for its worker,
held under ``lease`` like deliveries. Failure and stop marks live with the
state id.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import zlib
from collections.abc import Sequence
from typing import Any, cast

import anyio

from ..._errors import ConfigError
from ..._message import Message
from ..._serialization import CorruptEntryError
from .._base import Claim, Progress
from . import _codec as codec
from . import _compact as compact
from ._core import RedisCore, forget
from ._runs import _seen

__all__ = ["RedisWork"]

_GROUP = "workers"
_ENTRY_ID = re.compile(r"\d+(-\d+)?")
#: Announcement streams per prefix.
WORK_SHARDS = 8
_SLOTS = 16384


def work_keys(prefix: str) -> list[str]:
    """The announcement streams of ``prefix``: ``{prefix:%w<i>.<k>}:work``, the
    i-th in the i-th eighth of the hash slots. ``%w`` never starts an escaped
    state id (``%`` is escaped as ``%25``), so these are never taken for runs,
    and the key patterns of a restricted user (``~{prefix:*``) cover them."""
    from redis.crc import key_slot

    keys = []
    for i in range(WORK_SHARDS):
        low, high = i * _SLOTS // WORK_SHARDS, (i + 1) * _SLOTS // WORK_SHARDS
        k = 0
        while not low <= key_slot(f"{prefix}:%w{i}.{k}".encode()) < high:
            k += 1
        keys.append(f"{{{prefix}:%w{i}.{k}}}:work")
    return keys


class RedisWork(RedisCore):
    """The work distribution and inspection of ``RedisPubSubConnection``."""

    async def read_log(self, state_id: str, after: str | None) -> list[Message]:
        if after is None:
            return await self.apeek(state_id)
        if not _ENTRY_ID.fullmatch(after):
            raise ConfigError(
                f"after must be a message id of state id {state_id!r} (like '1700000000000-0'), got {after!r}"
            )
        return await self._read_log_from(state_id, "(" + after)

    def _work_keys(self) -> list[str]:
        keys: list[str] | None = getattr(self, "_work_keys_cache", None)
        if keys is None:
            keys = self._work_keys_cache = work_keys(self.prefix)
        return keys

    def _work_key(self, state_id: str) -> str:
        """The announcement stream of ``state_id``."""
        keys = self._work_keys()
        return keys[zlib.crc32(state_id.encode()) % len(keys)]

    def _mark_key(self, state_id: str, mark: str) -> str:
        return f"{{{self.prefix}:{codec.escape(state_id)}}}:{mark}"

    async def announce(self, state_id: str, *, help: bool = False) -> None:
        bound = await self._ready()
        marks = [self._mark_key(state_id, "failed"), self._mark_key(state_id, "stop")]
        calls = [bound.run("ANNOUNCE", [self._work_key(state_id)], [state_id, int(help)])]
        if not help:
            # Two slots (the state id's, the work stream's): two scripts sent together.
            calls.append(bound.run("UNMARK", marks, []))
        with self._failures(f"announcing state id {state_id!r} to workers"):
            await asyncio.gather(*calls)

    async def claim(self, worker: str, *, limit: int, max_seconds: float) -> list[Claim]:
        if limit < 1:
            raise ConfigError(f"limit must be at least 1, got {limit!r} (worker {worker!r})")
        doing = f"claiming announced state ids for worker {worker!r}"
        with self._failures(doing):
            entries, lasts = await self._claim_round(worker, limit)
            if not entries and max_seconds > 0 and await self._wait_for_work(lasts, max_seconds):
                entries, _ = await self._claim_round(worker, limit)
        claims, held = [], []
        for shard, entry_id, fields in entries:
            flat = codec.flat(fields)
            found = {codec.text(k): v for k, v in zip(flat[::2], flat[1::2], strict=True)}
            held.append(f"{shard}/{codec.text(entry_id)}")
            state_id, help = codec.text(found.get("s", b"")), found.get("h") == b"1"
            claims.append(Claim(state_id, (worker, held[-1]), help))
        if held:
            with self._lock:
                self._held.setdefault(worker, set()).update(held)
        return claims

    async def _claim_round(
        self, worker: str, limit: int
    ) -> tuple[list[tuple[int, Any, Any]], dict[int, Any]]:
        """Up to ``limit`` entries for ``worker`` from the announcement streams, one
        after the other from a different one each time; and, when none had any,
        each stream's last entry id (to wait for newer ones)."""
        keys = self._work_keys()
        lease = 0 if math.isinf(self.lease) else self._lease_ms
        bound = await self._ready()
        start = self._next_shard = (getattr(self, "_next_shard", -1) + 1) % len(keys)
        entries: list[tuple[int, Any, Any]] = []
        lasts: dict[int, Any] = {}
        for n in range(len(keys)):
            shard = (start + n) % len(keys)
            got, lasts[shard] = await bound.run(
                "CLAIM", [keys[shard]], [_GROUP, worker, lease, limit - len(entries)]
            )
            entries += ((shard, entry_id, fields) for entry_id, fields in got)
            if len(entries) >= limit:
                break
        return entries, lasts

    async def _wait_for_work(self, lasts: dict[int, Any], max_seconds: float) -> bool:
        """Wait until a stream has an entry newer than ``lasts`` (or ``max_seconds``).
        A plain read: nothing is taken, so a wait given up loses nothing."""
        keys = self._work_keys()
        block = self._block_ms(max_seconds)
        # Through the pool, not the batching runner: the read blocks only this caller.
        client = self._client().client
        if not self._cluster:
            return bool(await client.xread({keys[i]: last for i, last in lasts.items()}, block=block))
        # On a cluster each stream lives in its own slot: one read per stream, the
        # first to see an entry ends the others.
        woke = False

        async def read(key: str, last: Any) -> None:
            nonlocal woke
            if await client.xread({key: last}, block=block):
                woke = True
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            for i, last in lasts.items():
                tg.start_soon(read, keys[i], last)
        return woke

    async def renew_claims(self, worker: str) -> None:
        with self._lock:
            held = sorted(self._held.get(worker, ()))
        if not held:
            return
        keys = self._work_keys()
        by_shard: dict[int, list[str]] = {}
        for item in held:
            shard, _, entry_id = item.partition("/")
            by_shard.setdefault(int(shard), []).append(entry_id)
        bound = await self._ready()
        with self._failures(f"renewing the claims of worker {worker!r}"):
            await asyncio.gather(
                *(bound.run("RENEW_CLAIMS", [keys[i]], [_GROUP, worker, *ids]) for i, ids in by_shard.items())
            )

    async def finish(self, claim: Claim, *, hand_back: bool = False) -> None:
        worker, held = cast(tuple[str, str], claim.handle)
        with self._lock:
            forget(self._held, worker, held)
        shard, _, entry_id = held.partition("/")
        key = self._work_keys()[int(shard)]
        bound = await self._ready()
        with self._failures(f"finishing the claim of worker {worker!r} on state id {claim.state_id!r}"):
            await bound.run("FINISH", [key], [_GROUP, worker, entry_id, int(hand_back)])

    async def _mark(self, state_id: str, mark: str, value: bytes, doing: str) -> None:
        keys, args = self._keys(state_id)
        bound = await self._ready()
        with self._failures(doing):
            await self._call(bound, "MARK", state_id, [*keys, self._mark_key(state_id, mark)], [*args, value])

    async def mark_failed(self, state_id: str, record: dict[str, object]) -> None:
        try:
            value = json.dumps(record, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"the failure record of state id {state_id!r} must be JSON-compatible "
                f"(str, numbers, lists, dicts): {exc}"
            ) from exc
        await self._mark(state_id, "failed", value, f"marking state id {state_id!r} failed")

    async def progress(self, state_id: str, after: str | None, processes: Sequence[str]) -> Progress:
        if after is not None and not _ENTRY_ID.fullmatch(after):
            raise ConfigError(f"after must be a message id of state id {state_id!r}, got {after!r}")
        keys, args = self._keys(state_id)
        names = list(dict.fromkeys(processes))
        bound = await self._ready()
        with self._failures(f"following state id {state_id!r}"):
            keys.append(self._mark_key(state_id, "failed"))
            entries, raw, last, *counts = await bound.run("PROGRESS", keys, [*args, after or "", *names])
        _seen.set((id(self), args[0], last or b"0-0"))
        messages = [self._decode(keys[0], eid, codec.flat(fields), state_id) for eid, fields in entries]
        outstanding = {name: max(0, int(n or 0)) for name, n in zip(names, counts, strict=True)}
        return Progress(messages, outstanding, self._failure_record(state_id, raw))

    async def failure(self, state_id: str) -> dict[str, object] | None:
        bound = await self._ready()
        with self._failures(f"reading the failure of state id {state_id!r}"):
            raw = await bound.client.get(self._mark_key(state_id, "failed"))
        return self._failure_record(state_id, raw)

    def _failure_record(self, state_id: str, raw: bytes | str | None) -> dict[str, object] | None:
        if not raw:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise CorruptEntryError(
                f"Redis key {self._mark_key(state_id, 'failed')!r} does not hold a permflow failure "
                "record; something else wrote to it"
            )
        return record

    def _workers_key(self) -> str:
        return f"{{{self.prefix}}}:workers"

    async def heartbeat(self, worker: str, *, alive: bool = True) -> None:
        bound = await self._ready()
        with self._failures(f"recording the heartbeat of worker {worker!r}"):
            await bound.run("HEARTBEAT", [self._workers_key()], [worker, int(alive)])

    async def live_workers(self, within: float) -> list[str]:
        bound = await self._ready()
        with self._failures(f"listing the live workers under prefix {self.prefix!r}"):
            names = await bound.run("LIVE_WORKERS", [self._workers_key()], [int(within * 1000), 86_400_000])
        return sorted(codec.text(n) for n in names)

    def _stops_key(self) -> str:
        return f"{{{self.prefix}}}:stops"

    async def request_stop(self, state_id: str) -> None:
        doing = f"asking the workers to stop state id {state_id!r}"
        await self._mark(state_id, "stop", b"1", doing)  # from now on its commits are refused
        bound = await self._ready()
        with self._failures(doing):  # and the workers wake at once
            await bound.client.xadd(self._stops_key(), {"s": state_id}, maxlen=100, approximate=True)

    async def wait_for_stop_requests(self, after: object, max_seconds: float) -> object:
        since = after if isinstance(after, bytes) else b"0-0"
        bound = await self._ready()
        with self._failures("waiting for stop requests"):
            reply = await bound.client.xread({self._stops_key(): since}, block=self._block_ms(max_seconds))
        entries = [entry for _, batch in codec.streams(reply) for entry in batch]
        return entries[-1][0] if entries else since

    async def stop_requested(self, state_id: str) -> bool:
        bound = await self._ready()
        with self._failures(f"checking for a stop request of state id {state_id!r}"):
            return bool(await bound.client.exists(self._mark_key(state_id, "stop")))

    async def arun_summaries(self) -> list[dict[str, object]]:
        """One summary per state id under the prefix, most recently updated first:
        ``state_id``, ``outstanding`` (messages not yet acked, over its processes),
        ``updated_at`` (epoch seconds of its last change, 0.0 if unknown),
        ``failed`` (how its run failed on a worker, or None) and ``error`` (None,
        or why its keys cannot be read: a broken run, listed, never fatal)."""
        from redis.exceptions import RedisError

        state_ids = await self.astate_ids()
        bound = self._client()
        summaries: list[dict[str, object]] = []
        for start in range(0, len(state_ids), 500):
            chunk = state_ids[start : start + 500]
            pipe = bound.client.pipeline(transaction=False)
            for state_id in chunk:
                keys, _ = self._keys(state_id)
                pipe.hvals(keys[1])
                pipe.xrevrange(keys[4], count=1)
                pipe.xrevrange(keys[0], count=1)
                pipe.get(self._mark_key(state_id, "failed"))
            with self._failures(f"summarising runs under prefix {self.prefix!r}"):
                replies = await pipe.execute(raise_on_error=False)
                await self._compact_lasts(bound, chunk, replies)
            for k, state_id in enumerate(chunk):
                summaries.append(self._summary(state_id, replies[4 * k : 4 * k + 4], RedisError))
        summaries.sort(key=lambda s: cast(float, s["updated_at"]), reverse=True)
        return summaries

    async def _compact_lasts(self, bound: Any, state_ids: list[str], replies: list[Any]) -> None:
        """Put the last log entry of each compact run (whose log is a string) in
        ``replies`` where the summary pipeline's XREVRANGE of its log failed."""
        from redis.exceptions import ResponseError

        compact_ones = [
            k
            for k in range(len(state_ids))
            if isinstance(replies[4 * k + 2], ResponseError) and "WRONGTYPE" in str(replies[4 * k + 2])
        ]
        if not compact_ones:
            return
        pipe = bound.client.pipeline(transaction=False)
        for k in compact_ones:
            pipe.get(self._keys(state_ids[k])[0][0])
        blobs = await pipe.execute(raise_on_error=False)
        for k, blob in zip(compact_ones, blobs, strict=True):
            try:
                entries = compact.parse(blob)[1] if isinstance(blob, bytes) else []
            except (ValueError, IndexError) as exc:
                replies[4 * k + 2] = exc
                continue
            replies[4 * k + 2] = entries[-1:]

    def _summary(self, state_id: str, replies: list[Any], errors: type[Exception]) -> dict[str, object]:
        summary: dict[str, object] = {
            "state_id": state_id,
            "outstanding": None,
            "updated_at": 0.0,
            "failed": None,
            "error": None,
        }
        try:
            broken = next((r for r in replies if isinstance(r, errors)), None)
            if broken is not None:
                raise broken
            counts, *lasts, raw = replies
            stamps = [codec.id_key(codec.text(last[0][0]))[0] for last in lasts if last]
            summary["outstanding"] = sum(max(0, int(n)) for n in counts)
            summary["updated_at"] = max(stamps, default=0) / 1000
            record = self._failure_record(state_id, raw)
            if record is not None:
                summary["failed"] = f"{record.get('error')}: {record.get('message')}"
        except (CorruptEntryError, ValueError, TypeError, IndexError, errors) as exc:
            summary["error"] = f"{type(exc).__name__}: {exc}".rstrip(".")
        return summary

    def run_summaries(self) -> list[dict[str, object]]:
        """Sync twin of ``arun_summaries``."""
        from ..._portal import run_sync

        return run_sync(self.arun_summaries)

    async def astate_ids(self) -> list[str]:
        """State ids with keys under this prefix (SCAN, for inspection)."""
        bound = self._client()
        start = f"{{{self.prefix}:"
        pattern = codec.glob_escape(start) + "*"
        found: set[str] = set()
        # On a cluster, scan_iter goes through every primary.
        with self._failures(f"listing state ids under prefix {self.prefix!r}"):
            async for key in bound.client.scan_iter(match=pattern, count=500):
                text = codec.text(key)
                internal = text.startswith((f"{start}%w", f"{start}%f"))  # work streams, fences
                if text.startswith(start) and "}" in text and not internal:
                    found.add(codec.unescape(text[len(start) : text.index("}")]))
        return sorted(found)

    def state_ids(self) -> list[str]:
        """Sync twin of ``astate_ids``."""
        from ..._portal import run_sync

        return run_sync(self.astate_ids)
