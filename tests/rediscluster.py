"""A real Redis Cluster for the tests: six redis-server processes (three masters, three
replicas) on free ports, created with `redis-cli --cluster create`, with a short
cluster-node-timeout so a failover takes seconds. Fails loudly (never skips) when it cannot start.

The recipe, and what Redis 7.0 does when slots move, are in docs/design/redis-cluster.md.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from contextlib import suppress
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from .support import redis_server_binary, wait_for_redis_process, wait_until

NODE_TIMEOUT_MS = 2000
FAILOVER_TIMEOUT_SECS = 30
PASSWORD = "cluster-secret"  # every node's requirepass (and masterauth): REDIS_URL must carry it


def _port_pair_free(port: int) -> bool:
    """`port` and its cluster bus port (+10000) can both be bound."""
    if port + 10000 > 65535:
        return False
    for candidate in (port, port + 10000):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def cluster_ports(count: int) -> list[int]:
    """`count` ports whose bus ports are free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in ports and _port_pair_free(port):
            ports.append(port)
    return ports


class ClusterNodeProcess:
    def __init__(self, binary: str, port: int, workdir: Path) -> None:
        self.binary, self.port = binary, port
        self.dir = workdir / f"cluster-{port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self.dir / "redis.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ncluster-enabled yes\ncluster-config-file nodes.conf\n"
            f'cluster-node-timeout {NODE_TIMEOUT_MS}\nappendonly no\nsave ""\n'
            f"maxmemory-policy noeviction\ndir {self.dir}\n"
            # Redis 7 waits 5 s before a replica's first full sync: a master killed before it ends
            # has no replica able to take over.
            "repl-diskless-sync-delay 0\n"
            f"requirepass {PASSWORD}\nmasterauth {PASSWORD}\n"
        )
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.binary, str(config)], stdout=log, stderr=subprocess.STDOUT)
        wait_for_redis_process(self.proc, lambda: self.command("PING"), f"cluster node {self.port}", self.log_path)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=PASSWORD, socket_timeout=5, decode_responses=True)

    def command(self, *args: object) -> object:
        with self.client() as client:
            return client.execute_command(*args)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to the other nodes."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None


class TestCluster:
    """Three masters and three replicas on loopback."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, workdir: Path) -> None:
        binary = redis_server_binary()
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not installed (Debian: `apt-get install redis-tools`)", pytrace=False)
        self.nodes = [ClusterNodeProcess(binary, port, workdir) for port in cluster_ports(6)]
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        created = subprocess.run(
            [cli, "-a", PASSWORD, "--no-auth-warning", "--cluster", "create", *addresses]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            self.stop()
            pytest.fail(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}", pytrace=False)
        self.wait_healthy()

    @property
    def seeds(self) -> str:
        """NOTIFIER_REDIS_CLUSTER's value."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def node(self, port: int) -> ClusterNodeProcess:
        return next(node for node in self.nodes if node.port == port)

    def _view(self) -> list[dict[str, object]]:
        """CLUSTER NODES as a live node sees it: port, id, role, slots, failed."""
        for node in self.nodes:
            if node.alive():
                with suppress(redis.RedisError):
                    lines = str(node.command("CLUSTER", "NODES")).splitlines()
                    break
        else:
            raise AssertionError("no cluster node is alive")
        view = []
        for line in lines:
            fields = line.split()
            view.append(
                {
                    "id": fields[0],
                    "port": int(fields[1].split("@")[0].rsplit(":", 1)[1]),
                    "master": "master" in fields[2],
                    "failed": "fail" in fields[2] and "fail?" not in fields[2],
                    "slots": fields[8:],
                }
            )
        return view

    def masters(self) -> list[int]:
        """The ports of the masters that hold slots, as the cluster sees it now."""
        return sorted(int(n["port"]) for n in self._view() if n["master"] and n["slots"] and not n["failed"])  # type: ignore[call-overload]

    def healthy(self) -> bool:
        live = [node for node in self.nodes if node.alive()]
        try:
            states = [str(node.command("CLUSTER", "INFO")) for node in live]
            view = self._view()
        except redis.RedisError:
            return False
        replicas = [n for n in view if not n["master"] and not n["failed"]]
        try:  # and each replica has its master's data: only then can it take over
            synced = all(self._link_up(int(str(n["port"]))) for n in replicas)
        except redis.RedisError:
            return False
        return all("cluster_state:ok" in state for state in states) and len(replicas) >= len(live) - 3 and synced

    def _link_up(self, replica: int) -> bool:
        with self.node(replica).client() as client:
            return bool(client.info("replication").get("master_link_status") == "up")

    def wait_healthy(self, timeout: float = FAILOVER_TIMEOUT_SECS) -> None:
        wait_until(self.healthy, timeout=timeout, interval=0.1, what="the cluster to be ok with its replicas")

    def owner(self, key: str) -> int:
        """The port of the master that owns `key`'s slot now."""
        slot = key_slot(key.encode())
        for node in self._view():
            if not node["master"] or node["failed"]:
                continue
            for span in node["slots"]:  # type: ignore[attr-defined]
                if span.startswith("["):  # a migration in progress, not ownership
                    continue
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return int(node["port"])  # type: ignore[call-overload]
        raise AssertionError(f"no owner for slot {slot}")

    def kill_master(self, port: int) -> None:
        """kill -9 a master, and wait until its replica has taken over."""
        self.node(port).kill()
        wait_until(
            lambda: port not in self.masters() and len(self.masters()) == 3,
            timeout=FAILOVER_TIMEOUT_SECS,
            interval=0.1,
            what=f"a replica to take over from master {port}",
        )

    def migrate_slot(self, slot: int, source: int, target: int) -> None:
        """Move one slot and its keys from master `source` to master `target`, as
        `redis-cli --cluster reshard` does it (SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE)."""
        src, dst = self.node(source), self.node(target)
        src_id, dst_id = src.command("CLUSTER", "MYID"), dst.command("CLUSTER", "MYID")
        dst.command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "AUTH", PASSWORD, "KEYS", *keys)  # type: ignore[misc]
        dst.command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        src.command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for node in self.nodes:
            if node.alive() and node.port not in (source, target):
                with suppress(redis.RedisError):
                    node.command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def keys_per_master(self, pattern: str) -> dict[int, int]:
        """How many keys matching `pattern` each master holds."""
        counts = {}
        for port in self.masters():
            with self.node(port).client() as client:
                counts[port] = sum(1 for _ in client.scan_iter(match=pattern, count=1000))
        return counts

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
