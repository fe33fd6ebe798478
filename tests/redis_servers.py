"""Private Redis servers (and a TCP proxy in front of one) for fault-injection tests.

``RedisServer`` starts its own ``redis-server`` (from PATH) on a free port in a
fresh temporary directory, with nothing persisted, so a test can stop, restart,
freeze (SIGSTOP) and thaw (SIGCONT) it, or drop its client connections, without
touching the shared server other tests use. ``RedisServer(replica_of=primary)``
starts a replica of another one, which ``promote`` turns into a primary (a
failover, after ``kill`` of the primary). ``RedisClusterServers`` starts a real
Redis Cluster (its nodes in parallel), with replicas if asked, whose nodes a
test can freeze or kill (``signal``). Every process started here is stopped by
its pid.

``CuttingProxy`` forwards TCP connections to a server and, once armed, cuts the
connection that carries a request containing a given marker: either before the
request reaches the server (``"request"``: the command is never executed) or
after the server answered it (``"reply"``: the command was executed, its reply
is lost). Between a primary and its replica, ``hold`` keeps back everything
the primary sends from then on: a replica that lags, deterministically.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

import anyio
import anyio.abc

__all__ = ["CuttingProxy", "RedisClusterServers", "RedisServer", "free_port"]

_READY_SECONDS = 10.0
#: A cluster's nodes join by gossip, polled once a second by ``redis-cli --cluster
#: create``: on a loaded machine (a mutation check runs suites side by side) that
#: takes far longer than one server's start.
_CLUSTER_READY_SECONDS = 60.0
_STOP_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, below the
    ephemeral range so that neither is handed out meanwhile."""
    while True:
        port = random.randrange(20000, 30000)
        if _bindable(port) and _bindable(port + 10000):
            return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _persistence(persistent: bool) -> tuple[str, ...]:
    if persistent:
        return ("--appendonly", "yes", "--appendfsync", "always")
    return ("--appendonly", "no")


class RedisServer:
    """One ``redis-server`` of a test's own, on a fixed port across restarts."""

    def __init__(self, *, persistent: bool = False, replica_of: RedisServer | int | None = None) -> None:
        """``persistent``: an append-only file synced on every write, so that what
        was stored survives ``restart`` (as on a production server).
        ``replica_of``: a replica of that (started) server, or of the one on that
        port (a proxy); ``start`` returns once it is in sync."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="permflow-faults-")
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self.persistent = persistent
        self.replica_of = replica_of

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for(self, user: str, password: str) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not running"
        return self.process.pid

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        assert self.process is None, "already running"
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--dir", self.dir,
            *_persistence(self.persistent),
            # a replica syncs at once (the default waits 5 s for more replicas)
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.replica_of is not None:
            port = self.replica_of if isinstance(self.replica_of, int) else self.replica_of.port
            command += ["--replicaof", "127.0.0.1", str(port)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + _READY_SECONDS
        while not _answers_ping(self.port) or (self.replica_of is not None and not self.in_sync()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start (or sync) on port {self.port}")
            time.sleep(0.02)  # waiting for an external server to listen, not synchronising tests

    def in_sync(self) -> bool:
        """This replica's link to its primary is up and the primary counts it in a
        ``WAIT`` (a test's first write must not wait for the replica to settle)."""
        import redis

        assert self.replica_of is not None
        port = self.replica_of if isinstance(self.replica_of, int) else self.replica_of.port
        with self.admin() as client:
            if client.info("replication").get("master_link_status") != "up":
                return False
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as primary:
            info = primary.info("replication")
            online = any(
                isinstance(v, dict) and v.get("port") == self.port and v.get("state") == "online"
                for v in info.values()
            )
            if not online:
                return False
            # and it has acknowledged a write (after a diskless sync, the primary streams
            # writes to it only once it acknowledged the sync, within a second)
            primary.set("redis-servers:replica-ready", 1, px=1000)
            return int(primary.execute_command("WAIT", 1, 100)) >= 1

    def kill(self) -> None:
        """SIGKILL by pid, as a crashed machine: nothing is flushed or handed over."""
        process, self.process = self.process, None
        if process is not None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(_STOP_SECONDS)
        self.frozen = False

    def promote(self) -> None:
        """Make this replica a primary (``REPLICAOF NO ONE``), as a failover does."""
        with self.admin() as client:
            client.execute_command("REPLICAOF", "NO", "ONE")
        self.replica_of = None

    def stop(self) -> None:
        """SIGTERM by pid and wait; SIGKILL if it does not go. Thaws it first."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            if self.frozen:
                os.kill(process.pid, signal.SIGCONT)
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(_STOP_SECONDS)
        else:
            process.wait()
        self.frozen = False

    def close(self) -> None:
        """Thaw, stop, and remove the server's directory."""
        self.thaw()
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self, down_seconds: float) -> None:
        """Stop, stay down ``down_seconds`` (simulated downtime), start on the same port."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after ``freeze``."""
        if self.frozen and self.process is not None:
            os.kill(self.pid, signal.SIGCONT)
        self.frozen = False

    def admin(self) -> Any:
        """A plain sync client as the default user (close it after use)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=0, socket_timeout=5)

    def kill_clients(self) -> int:
        """Drop every normal client connection but the one asking; how many were dropped."""
        with self.admin() as client:
            return int(client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))


class CuttingProxy:
    """A TCP proxy to ``127.0.0.1:target_port`` that cuts one connection on demand.

    ``arm(marker, mode)``: the next request (client to server bytes) that
    contains ``marker`` has its connection cut; ``mode`` ``"request"`` drops the
    request unsent, ``"reply"`` forwards it and drops the server's answer to it.
    ``fired`` is set once that happened. One shot: later connections and
    requests pass untouched. Run ``serve`` in a task group (``tg.start``).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.fired = anyio.Event()
        self.connections = 0
        self.dropped_reply = b""  # in "reply" mode: the start of the answer that was dropped
        self._marker: bytes | None = None
        self._mode = ""
        self.held = 0  # bytes from the server kept back since ``hold``
        self._holding = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def hold(self) -> None:
        """From now on, forward nothing the server sends (count it in ``held``);
        what was held is lost when the proxy stops."""
        self._holding = True

    def arm(self, marker: bytes, mode: str) -> None:
        assert mode in ("request", "reply"), mode
        self._marker, self._mode = marker, mode

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener:
            self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
            task_status.started()
            await listener.serve(self._forward)

    async def _forward(self, client: anyio.abc.SocketStream) -> None:
        self.connections += 1
        try:
            await self._pump(client)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # either side went away: so does the other (the socket closes)

    async def _pump(self, client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_tcp("127.0.0.1", self.target_port) as server:
            reply_cut = anyio.Event()  # set: the next bytes from the server are the answer to drop

            async def upstream() -> None:
                tail = b""
                async for chunk in client:
                    marker = self._marker
                    seen, tail = tail + chunk, (tail + chunk)[-64:]
                    if marker is not None and marker in seen:
                        self._marker = None
                        if self._mode == "request":
                            self.fired.set()
                            tg.cancel_scope.cancel()  # nothing reaches the server
                            return
                        reply_cut.set()
                    await server.send(chunk)
                tg.cancel_scope.cancel()

            async def downstream() -> None:
                async for chunk in server:
                    if self._holding:
                        self.held += len(chunk)
                        continue
                    if reply_cut.is_set():
                        self.dropped_reply = chunk
                        self.fired.set()
                        tg.cancel_scope.cancel()  # the server executed it; its answer is lost
                        return
                    await client.send(chunk)
                tg.cancel_scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(upstream)
                tg.start_soon(downstream)


class RedisClusterServers:
    """A real Redis Cluster of ``masters`` primaries, each with ``replicas``
    replicas, each node a ``redis-server`` of its own on a free port in one
    temporary directory.

    ``start`` returns once every node reports ``cluster_state:ok`` and every
    replica is in sync with its primary; ``close`` stops every node by its pid.
    ``url`` is the ``redis+cluster://`` URL of the first node (any node finds
    the others). ``node_timeout`` (ms) is how long a node may be unreachable
    before the others call it failed."""

    def __init__(self, masters: int = 3, *, replicas: int = 0, node_timeout: int = 5000) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            raise RuntimeError("redis-server and redis-cli must be on PATH")
        self.binary, self.cli = binary, cli
        self.replicas = replicas
        self.node_timeout = node_timeout
        self.dir = tempfile.mkdtemp(prefix="permflow-cluster-")
        self.ports: list[int] = []
        while len(self.ports) < masters * (1 + replicas):
            port = _cluster_port()
            if port not in self.ports:
                self.ports.append(port)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        for port in self.ports:
            node_dir = os.path.join(self.dir, str(port))
            os.mkdir(node_dir)
            command = [
                self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", node_dir,
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout), "--save", "", "--appendonly", "no",
                "--repl-diskless-sync-delay", "0",
            ]  # fmt: skip
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            self.processes[port] = subprocess.Popen(command, **quiet)
        deadline = time.monotonic() + _CLUSTER_READY_SECONDS
        for port in self.ports:
            while not _answers_ping(port):
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"redis-server did not start on port {port}")
                time.sleep(0.02)  # waiting for an external server to listen, not synchronising tests
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        replicas = ["--cluster-replicas", str(self.replicas)]
        try:
            subprocess.run(
                [self.cli, "--cluster", "create", *nodes, *replicas, "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                timeout=max(1.0, deadline - time.monotonic()),
            )  # fmt: skip
        except BaseException:
            self.close()  # the servers it started, by pid
            raise
        self._wait_until(self.settled, deadline, "reach cluster_state:ok with every replica in sync")

    def _wait_until(self, ready: Any, deadline: float, what: str) -> None:
        while not ready():
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the test cluster did not {what}")
            time.sleep(0.05)  # waiting for the nodes to agree, not synchronising tests

    def settled(self) -> bool:
        """Every running node reports ``cluster_state:ok``, and every running
        primary counts each of its running replicas in a ``WAIT``."""
        for port in self.running():
            with self.admin(port) as client:
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
        for primary, replicas in self.shards().items():
            if primary not in self.running():
                return False  # not yet replaced
            alive = [port for port in replicas if port in self.running()]
            with self.admin(primary) as client:
                info = client.info("replication")
                online = [
                    v.get("port") for v in info.values() if isinstance(v, dict) and v.get("state") == "online"
                ]
                if sorted(online) != sorted(alive):
                    return False
                if not alive:
                    continue
                # and they acknowledged a write (after a diskless sync, a primary streams
                # writes to a replica only once it acknowledged the sync, within a second)
                client.set(self.key_on(primary), 1, px=1000)
                if int(client.execute_command("WAIT", len(alive), 100)) < len(alive):
                    return False
        return True

    def running(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def shards(self) -> dict[int, list[int]]:
        """Each primary (serving slots) and the ports of its replicas, as the first
        running node reports them."""
        alive = self.running()
        with self.admin(alive[0]) as client:
            nodes = client.execute_command("CLUSTER", "NODES")
        text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
        ids: dict[str, int] = {}
        primaries: dict[int, list[int]] = {}
        rows = [line.split() for line in text.splitlines() if line.strip()]
        for row in rows:
            ids[row[0]] = int(row[1].split("@")[0].rsplit(":", 1)[1])
        for row in rows:
            if "master" in row[2] and "fail" not in row[2] and len(row) > 8:  # serving slots
                primaries.setdefault(ids[row[0]], [])
        for row in rows:
            if "slave" in row[2] and ids.get(row[3]) in primaries:
                primaries[ids[row[3]]].append(ids[row[0]])
        return primaries

    def key_on(self, primary: int, prefix: str = "ready") -> str:
        """A key (``prefix`` and a number) of a hash slot the node on ``primary`` serves."""
        from redis.crc import key_slot

        with self.admin(primary) as client:
            ranges = [(int(r[0]), int(r[1])) for r in client.execute_command("CLUSTER", "SLOTS")
                      if int(r[2][1]) == primary]  # fmt: skip
        n = 0
        while not any(low <= key_slot(f"{prefix}{n}".encode()) <= high for low, high in ranges):
            n += 1
        return f"{prefix}{n}"

    def admin(self, port: int) -> Any:
        """A plain sync client on one node (close it after use)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def signal(self, port: int, signum: int) -> None:
        """Send ``signum`` (SIGSTOP, SIGCONT, SIGKILL) to the node on ``port``, by its pid."""
        process = self.processes[port]
        if process.poll() is None:
            os.kill(process.pid, signum)
            if signum == signal.SIGKILL:
                process.wait(_STOP_SECONDS)

    def close(self) -> None:
        """Stop every node by its pid (thawing it first) and remove the directory."""
        processes, self.processes = list(self.processes.values()), {}
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(_STOP_SECONDS)
        shutil.rmtree(self.dir, ignore_errors=True)
