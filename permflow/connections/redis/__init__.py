"""The distributed connection: runs stored in Redis Streams.

Importing this package does not import ``redis``; the client library is loaded
when a connection is first used (install it with ``pip install -e '.[redis]'``).

One module per concept::

    _connection.py    RedisPubSubConnection: construction, URLs
    _core.py          settings, one client per event loop, key layout
    _client.py        one client on one loop: batched scripts, reconnects
    _failures.py      Redis errors as permflow errors, with accurate hints
    _runs.py          the run protocol (register, publish, fetch, commit, ...)
    _work.py          work distribution for workers, and run inspection
    _cache.py         cached step results
    _codec.py         entries and messages, ids, escaping
    _scripts.py       Lua scripts of the run protocol
    _script_lib.py    Lua pieces the scripts share
    _work_scripts.py  Lua scripts of work distribution
"""

from ..._serialization import CorruptEntryError
from ._connection import RedisPubSubConnection

__all__ = ["CorruptEntryError", "RedisPubSubConnection"]
