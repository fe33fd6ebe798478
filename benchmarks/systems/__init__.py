"""One module per measured system; each defines ``System`` (see ``asyncio_baseline``).

A system has ``family`` ("memory" or "redis"), ``versions()``, async
``start()``/``stop()``, and builds ``Pipeline``s from primitives:
``chain(n, kind)`` (n processes, each adding 1; kind "async" or "sync"
bodies) and ``fanout(n)`` (one input to n subscribers adding 1..n, then a join
returning the sorted list). Redis systems add ``ping()``, ``hop_chain(n)``
and ``batch_hops(batch, hops)``.
"""
