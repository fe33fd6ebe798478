"""Redis errors become permflow errors whose message fits the cause (connections/redis/_failures.py)."""

from __future__ import annotations

import pytest
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from permflow import ConnectionFailedError
from permflow.connections.redis import CorruptEntryError
from permflow.connections.redis._failures import convert

FAILED, CORRUPT = ConnectionFailedError, CorruptEntryError


def converted(exc: Exception) -> Exception:
    return convert(exc, where="redis://h:6379/0", prefix="myapp", doing="fetching for 'p'", timeout=5.0)


@pytest.mark.parametrize(
    ("raised", "kind", "says", "never"),
    [
        (AuthenticationError("invalid username-password pair"), FAILED, "credentials", "reconnects"),
        (ResponseError("WRONGPASS invalid username-password pair"), FAILED, "password", "reconnects"),
        (NoPermissionError("this user has no permissions to run the 'evalsha' command"), FAILED,
         "NOPERM", "another program"),
        (ResponseError("MOVED 7593 127.0.0.1:7001"), FAILED, "Cluster", "another program"),
        (ResponseError("CLUSTERDOWN The cluster is down"), FAILED, "cannot serve", "another program"),
        (ResponseError("READONLY You can't write against a replica."), FAILED, "cannot serve", "key"),
        (ResponseError("OOM command not allowed when used memory > 'maxmemory'."), FAILED, "memory", "key"),
        (ResponseError("NOGROUP No such key '{a:b}:t:x'"), CORRUPT, "missing", "reconnects"),
        (ResponseError("ERR unknown command 'XAUTOCLAIM', with args beginning with:"), FAILED,
         "6.2", "another program"),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), CORRUPT,
         "another type", "reconnects"),
        (RedisConnectionError("Connection closed by server."), FAILED, "reconnects", "credentials"),
        (RedisTimeoutError("Timeout reading from h:6379"), FAILED, "did not answer within", "NOPERM"),
    ],
)  # fmt: skip
def test_each_kind_of_failure_gets_its_own_hint(raised: Exception, kind: type, says: str, never: str) -> None:
    """Each class of server error maps to its permflow type with a hint of its own, naming the action."""
    error = converted(raised)
    assert type(error) is kind
    text = str(error)
    assert says in text and never not in text and "fetching for 'p'" in text and "redis://h:6379/0" in text


def test_a_permission_error_names_the_key_patterns_of_the_prefix() -> None:
    """A NOPERM error says which key patterns and command categories the user needs."""
    text = str(converted(NoPermissionError("No permissions to access a key")))
    assert "'~{myapp:*'" in text and "'~{myapp}:*'" in text and "+@scripting" in text


def test_a_script_denied_by_acl_is_recognised_without_the_noperm_word() -> None:
    """Redis 7 reports an ACL denial inside a script without 'NOPERM': it still gets the ACL hint."""
    reason = "ERR The user executing the script can't run this command or subcommand script: abc"
    text = str(converted(ResponseError(reason)))
    assert text.count("NOPERM") == 1 and "'~{myapp:*'" in text


@pytest.mark.parametrize(
    ("raised", "cluster", "says"),
    [
        (ResponseError("MOVED 7593 127.0.0.1:7001"), False, "redis+cluster://"),
        (ResponseError("ASK 7593 127.0.0.1:7001"), False, "cluster=True"),
        (ResponseError("MOVED 7593 127.0.0.1:7001"), True, "slots are moving"),
        (ResponseError("ERR Script attempted to access a non local key in a cluster node script: f"), True,
         "slots are moving"),
        (ResponseError("CROSSSLOT Keys in request don't hash to the same slot"), True, "slots are moving"),
        (ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"), True, "cannot serve"),
        (ResponseError("CLUSTERDOWN Hash slot not served"), True, "--cluster check"),
        (ResponseError("ERR user_script:3: Unknown Redis command called from script script: 1a"), False,
         "6.2"),
    ],
)  # fmt: skip
def test_cluster_failures_get_cluster_hints(raised: Exception, cluster: bool, says: str) -> None:
    """Redirections, keys another node serves and unknown commands say so, never 'another program'."""
    error = convert(
        raised, where="redis://h:7000/0", prefix="myapp", doing="committing", timeout=5.0, cluster=cluster
    )
    assert type(error) is FAILED
    assert says in str(error) and "another program" not in str(error) and "committing" in str(error)


def test_a_cluster_client_failure_is_a_connection_failure_with_a_hint() -> None:
    """redis-py's RedisClusterException (not a RedisError) becomes a ConnectionFailedError."""
    from redis.exceptions import RedisClusterException, SlotNotCoveredError

    for raised, says in [
        (RedisClusterException("Cluster mode is not enabled on this node"), "without '+cluster'"),
        (SlotNotCoveredError("Slot 12 not covered by the cluster"), "cover every hash slot"),
    ]:
        error = convert(
            raised, where="redis+cluster://h:7000", prefix="p", doing="x", timeout=5.0, cluster=True
        )
        assert type(error) is FAILED and says in str(error), str(error)


def test_errors_redis_py_parsed_into_cluster_types_keep_their_hints() -> None:
    """MovedError, AskError, TryAgainError and ClusterDownError (their code stripped) get cluster hints."""
    from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

    for raised, cluster, says in [
        (MovedError("7593 127.0.0.1:7001"), False, "redis+cluster://"),
        (AskError("7593 127.0.0.1:7001"), True, "slots are moving"),
        (TryAgainError("Multiple keys request during rehashing of slot"), True, "TRYAGAIN"),
        (ClusterDownError("The cluster is down"), True, "CLUSTERDOWN"),
    ]:
        error = convert(raised, where="redis://h:7000/0", prefix="p", doing="x", timeout=5.0, cluster=cluster)
        assert type(error) is FAILED and says in str(error) and "another program" not in str(error)
