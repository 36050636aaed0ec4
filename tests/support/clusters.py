"""Real clusters on this machine, without Docker: a Redis Cluster and a RabbitMQ cluster.

- `RedisCluster`: six `redis-server --cluster-enabled yes` (3 masters, 3 replicas)
  joined by `redis-cli --cluster create`, with a short `cluster-node-timeout`
  so a replica takes over from a dead master in about a second.
- `RabbitCluster`: three RabbitMQ nodes (own node name, AMQP and distribution
  ports, data and log directories) joined with `rabbitmqctl join_cluster`.

Every run picks free ports and a fresh directory under the system's temp dir,
named after the process that owns it. A run killed before its teardown leaves
servers and directories behind; the next start stops those whose owner is gone
(by the pid files in the directory, by node name for RabbitMQ) and removes the
directories, so leftovers never break a run. Clusters started for `make run`
(`python -m tests.support.clusters start`) belong to nobody's pid and are only
stopped by `... stop`.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.dedicated import wait_port
from tests.support.serving import free_port

DIR_PREFIX = "offload-cluster-"
NODE_PREFIX = "offloadcluster"
USER_OWNER = 0
"""The owner recorded for clusters a user started: never stale, stopped only by `stop`."""

REDIS_NODE_TIMEOUT_MS = 1000
REDIS_NODES = 6
RABBIT_NODES = 3
CREATE_OPTIONS = ("--cluster-replicas", "1", "--cluster-yes")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port() -> int:
    """A free port for a Redis Cluster node, whose bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port <= 55535 and _port_free(port + 10000):
            return port


def _alive(pid: int) -> bool:
    """Running, not a zombie: a killed run whose parent died too may stay a zombie for good."""
    if not Path("/proc").is_dir():  # not Linux: no zombie check
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill_pid_file(path: Path, expect: str) -> None:
    """SIGKILL the process a pid file names, if it is still the program we started."""
    try:
        pid = int(path.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return
    if expect in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _rabbitmqctl(node: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", "-n", node, *args], capture_output=True, text=True, timeout=timeout
    )


def _check(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr or done.stdout}")


class _Owned:
    """A directory of this cluster's own, named after its owner, with an `owner` file."""

    kind = ""

    def __init__(self, owner: int | None = None) -> None:
        self.owner = os.getpid() if owner is None else owner
        self.base = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{self.kind}-{self.owner}-"))
        (self.base / "owner").write_text(str(self.owner))


def remove_stale(*, everything_of_users: bool = False) -> list[Path]:
    """Stop what killed runs left behind (owner gone) and remove their directories.

    With `everything_of_users`, also the clusters a user started (`stop`).
    """
    removed = []
    for base in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            owner = int((base / "owner").read_text())
        except (OSError, ValueError):
            owner = -1  # died before writing its owner: nothing can own it
        if owner == USER_OWNER and not everything_of_users:
            continue
        if owner not in (-1, USER_OWNER) and _alive(owner):
            continue
        for node in sorted(base.glob("rabbit-*")):
            if (node / "pid").exists():
                _kill_pid_file(node / "pid", "beam")
            elif (node / "nodename").exists():  # killed before its pid file was written
                _rabbitmqctl((node / "nodename").read_text(), "shutdown", timeout=30)
        for pid_file in base.glob("redis-*/pid"):
            _kill_pid_file(pid_file, "redis-server")
        shutil.rmtree(base, ignore_errors=True)
        removed.append(base)
    return removed


# ------------------------------------------------------------------------- Redis


class RedisCluster(_Owned):
    """Six redis-servers in cluster mode: 3 masters and 3 replicas, nothing on disk."""

    kind = "redis"

    def __init__(self, owner: int | None = None) -> None:
        super().__init__(owner)
        self.ports = [_cluster_port() for _ in range(REDIS_NODES)]
        self.started_s = 0.0

    @property
    def url(self) -> str:
        """A seed node's URL (a cluster client discovers the others from it)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def cluster_url(self) -> str:
        """`OFFLOAD_REDIS_URL` for Offload's services: the masters, any of which will do."""
        return "redis+cluster://" + ",".join(self.addresses[:3])

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def _node_dir(self, port: int) -> Path:
        return self.base / f"redis-{port}"

    def start(self) -> None:
        began = time.monotonic()
        for port in self.ports:
            self._node_dir(port).mkdir()
            self._start_node(port)
        for port in self.ports:
            wait_port(port, up=True, timeout=20)
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *self.addresses, *CREATE_OPTIONS],
            capture_output=True,
            text=True,
            timeout=60,
        )
        _check(created, "redis-cli --cluster create")
        self.wait_healthy()
        self.started_s = time.monotonic() - began

    def _start_node(self, port: int) -> None:
        """Start (or start again, with its `nodes.conf`) the node on `port`."""
        node = self._node_dir(port)
        subprocess.run(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(REDIS_NODE_TIMEOUT_MS),
                "--dir",
                str(node),
                "--pidfile",
                str(node / "pid"),
                "--logfile",
                str(node / "log"),
                "--save",
                "",
                "--appendonly",
                "no",
                # A replica syncs at once (the default waits 5 s for others to share a sync).
                "--repl-diskless-sync-delay",
                "0",
                "--daemonize",
                "yes",
            ],
            check=True,
            timeout=20,
        )

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
        )
        _check(done, f"redis-cli -p {port} {' '.join(args)}")
        return done.stdout

    def wait_healthy(self, timeout: float = 30) -> None:
        """Every live node says `cluster_state:ok`, 3 masters hold the 16384 slots, and every
        replica has synced with its master (until then the master's writes reach no replica)."""
        deadline = time.monotonic() + timeout
        while True:
            states = [self.cli(port, "cluster", "info") for port in self.live_ports()]
            replication = [self.cli(port, "info", "replication") for port in self.live_ports()]
            if all(
                "cluster_state:ok" in s and "cluster_slots_ok:16384" in s for s in states
            ) and all("role:slave" not in r or "master_link_status:up" in r for r in replication):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Redis Cluster is not healthy: {states}")
            time.sleep(0.1)

    def live_ports(self) -> list[int]:
        return [port for port in self.ports if (self._node_dir(port) / "pid").exists()]

    def masters(self) -> list[int]:
        """Ports of the nodes that are masters now."""
        lines = self.cli(self.live_ports()[0], "cluster", "nodes").splitlines()
        return sorted(
            int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for fields in (line.split() for line in lines)
            if "master" in fields[2] and "fail" not in fields[2]
        )

    def replicas(self) -> list[int]:
        """Ports of the nodes that are replicas now."""
        lines = self.cli(self.live_ports()[0], "cluster", "nodes").splitlines()
        return sorted(
            int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for fields in (line.split() for line in lines)
            if "slave" in fields[2] and "fail" not in fields[2]
        )

    def pause(self, port: int) -> None:
        """The node stops answering and replicating (SIGSTOP), its connections left open."""
        self._signal(port, signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self._signal(port, signal.SIGCONT)

    def _signal(self, port: int, signum: signal.Signals) -> None:
        os.kill(int((self._node_dir(port) / "pid").read_text().strip()), signum)

    def kill(self, port: int) -> None:
        """A node dies (SIGKILL): its replica takes over after the node timeout."""
        pid_file = self._node_dir(port) / "pid"
        _kill_pid_file(pid_file, "redis-server")
        pid_file.unlink(missing_ok=True)
        wait_port(port, up=False, timeout=10)

    def restart(self, port: int, timeout: float = 30) -> None:
        """A killed node starts again: it rejoins the cluster as a replica of the node
        that took over its slots, and the cluster is whole again (3 masters, 3 replicas)."""
        self._start_node(port)
        wait_port(port, up=True, timeout=20)
        deadline = time.monotonic() + timeout
        while not self.cli(port, "role").startswith("slave"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the node on {port} did not rejoin as a replica")
            time.sleep(0.1)
        self.wait_healthy(timeout)

    def stop(self) -> None:
        for port in self.ports:
            _kill_pid_file(self._node_dir(port) / "pid", "redis-server")
        shutil.rmtree(self.base, ignore_errors=True)


# ---------------------------------------------------------------------- RabbitMQ


class RabbitNode:
    """One node of a `RabbitCluster`: its own name, ports and directories."""

    def __init__(self, cluster_base: Path, owner: int) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"{NODE_PREFIX}{owner}x{self.port}@localhost"
        self.base = cluster_base / f"rabbit-{self.port}"
        self.base.mkdir()
        (self.base / "nodename").write_text(self.name)
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            # The suite's machine is small and busy: no disk alarm on a nearly full /tmp.
            "disk_free_limit.absolute = 50MB\n"
        )
        (self.base / "env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        (self.base / "enabled_plugins").write_text("[].\n")
        for path in (self.base, *self.base.iterdir()):
            shutil.chown(path, "rabbitmq", "rabbitmq")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start_server(self) -> None:
        env = {
            **os.environ,
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.base / "pid"),
        }
        subprocess.run(["rabbitmq-server", "-detached"], env=env, check=True, timeout=60)

    def wait_booted(self, timeout: float = 120) -> None:
        # `wait` first waits for the pid file (the node may not be registered yet).
        waited = _rabbitmqctl(
            self.name, "wait", str(self.base / "pid"), "--timeout", str(int(timeout)),
            timeout=timeout + 10,
        )  # fmt: skip
        _check(waited, f"{self.name} start")

    def join(self, first: "RabbitNode") -> None:
        _check(_rabbitmqctl(self.name, "stop_app"), f"{self.name} stop_app")
        _check(_rabbitmqctl(self.name, "join_cluster", first.name), f"{self.name} join")
        _check(_rabbitmqctl(self.name, "start_app"), f"{self.name} start_app")

    def stop_app(self) -> None:
        """The node goes away for clients: its connections drop and its port closes."""
        _check(_rabbitmqctl(self.name, "stop_app"), f"{self.name} stop_app")
        wait_port(self.port, up=False, timeout=30)

    def start_app(self) -> None:
        _check(_rabbitmqctl(self.name, "start_app"), f"{self.name} start_app")
        wait_port(self.port, up=True, timeout=60)

    @property
    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """The node's Erlang VM is killed: nothing of a throwaway node needs a clean stop."""
        _kill_pid_file(self.base / "pid", "beam")


class RabbitCluster(_Owned):
    """Three RabbitMQ nodes in one cluster (a quorum queue's majority survives one loss)."""

    kind = "rabbit"

    def __init__(self, owner: int | None = None) -> None:
        super().__init__(owner)
        shutil.chown(self.base, "rabbitmq", "rabbitmq")  # the nodes run as `rabbitmq`
        self.nodes = [RabbitNode(self.base, self.owner) for _ in range(RABBIT_NODES)]
        self.started_s = 0.0

    @property
    def url(self) -> str:
        """`OFFLOAD_RABBITMQ_URL` naming every node, comma-separated."""
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        began = time.monotonic()
        # The nodes boot at the same time; joining is one node after the other.
        for node in self.nodes:
            node.start_server()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.wait_booted(), self.nodes))
        first, *others = self.nodes
        for node in others:
            node.join(first)
        for node in self.nodes:
            wait_port(node.port, up=True, timeout=60)
        running = self.running_nodes(first)
        if sorted(running) != sorted(node.name for node in self.nodes):
            raise RuntimeError(f"the RabbitMQ cluster did not form: running {running}")
        self.started_s = time.monotonic() - began

    def running_nodes(self, asked: RabbitNode) -> list[str]:
        done = _rabbitmqctl(asked.name, "cluster_status", "--formatter", "json")
        _check(done, "cluster_status")
        return list(json.loads(done.stdout)["running_nodes"])

    def add_vhost(self, vhost: str) -> str:
        """A vhost on the cluster for one run; the multi-node URL that reaches it."""
        first = self.nodes[0]
        _check(_rabbitmqctl(first.name, "add_vhost", vhost), "add_vhost")
        _check(
            _rabbitmqctl(first.name, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"),
            "set_permissions",
        )
        return ",".join(f"{node.url}{vhost}" for node in self.nodes)

    def queue_leader(self, vhost: str, queue: str) -> "RabbitNode":
        """The node that leads a quorum queue now (asking the first node that runs)."""
        for asked in self.nodes:
            done = _rabbitmqctl(
                asked.name, "list_queues", "-p", vhost, "name", "leader", "--formatter", "json"
            )
            if done.returncode == 0:
                break
        _check(done, "list_queues")
        [leader] = [row["leader"] for row in json.loads(done.stdout) if row["name"] == queue]
        return next(node for node in self.nodes if node.name == leader)

    def connection_ports(self, vhost: str) -> list[int]:
        """The AMQP port (so the node) each client connection to `vhost` is on, cluster-wide."""
        for asked in self.nodes:
            done = _rabbitmqctl(
                asked.name, "list_connections", "vhost", "port", "--formatter", "json"
            )
            if done.returncode == 0:
                break
        _check(done, "list_connections")
        return [int(row["port"]) for row in json.loads(done.stdout) if row["vhost"] == vhost]

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.base, ignore_errors=True)


# ------------------------------------------------------------------- for make run

STATE = Path(__file__).resolve().parents[2] / "var" / "clusters.json"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.clusters",
        description="Start or stop a local Redis Cluster (3+3) and RabbitMQ cluster (3 nodes) "
        "for `make run` against them.",
    )
    parser.add_argument("action", choices=["start", "stop", "env"])
    args = parser.parse_args(argv)
    if args.action == "stop":
        removed = remove_stale(everything_of_users=True)
        STATE.unlink(missing_ok=True)
        print(f"stopped {len(removed)} cluster(s)")
        return 0
    if args.action == "env":
        if not STATE.exists():
            print("no clusters: run `python -m tests.support.clusters start`", file=sys.stderr)
            return 1
        print(_exports(json.loads(STATE.read_text())))
        return 0
    if STATE.exists():
        print("clusters already started; `stop` them first", file=sys.stderr)
        return 1
    remove_stale()
    redis, rabbit = RedisCluster(owner=USER_OWNER), RabbitCluster(owner=USER_OWNER)
    try:
        redis.start()
        rabbit.start()
    except BaseException:
        redis.stop()
        rabbit.stop()
        raise
    STATE.parent.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps({"rabbitmq_url": rabbit.url, "redis_url": redis.cluster_url}))
    print(f"Redis Cluster (3 masters, 3 replicas) in {redis.started_s:.1f}s: {redis.addresses}")
    print(f"RabbitMQ cluster (3 nodes) in {rabbit.started_s:.1f}s")
    print(_exports({"rabbitmq_url": rabbit.url, "redis_url": redis.cluster_url}))
    return 0


def _exports(state: dict[str, str]) -> str:
    """Shell lines to `eval`: both clusters' URLs for Offload's services."""
    return "\n".join(
        [
            f"export OFFLOAD_RABBITMQ_URL='{state['rabbitmq_url']}'",
            f"export OFFLOAD_REDIS_URL='{state['redis_url']}'",
        ]
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
