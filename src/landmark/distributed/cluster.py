"""A Ray cluster of several nodes on this machine: one head and worker nodes, each its own raylet.

What the multi-node test and ``benchmarks/distributed.py`` run on: ``ray start --head`` plus one
``ray start --address`` per worker node, all on loopback, every port chosen free, the session
directory in a fresh temporary folder; a worker node can be killed by its pids (the raylet and every
process under it) as if its machine were lost. Nothing is left running after :meth:`LocalCluster.stop`.

>>> with LocalCluster(workers=[{"num_cpus": 1}, {"num_cpus": 1}]) as cluster:   # doctest: +SKIP
...     ray.init(address=cluster.address)
...     cluster.kill_worker(1)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LandmarkError

HOST = "127.0.0.1"
# how fast the head declares a silent node dead (Ray's defaults take about 30 s)
FAST_FAILURE_DETECTION = {
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 4,
    "health_check_timeout_ms": 1000,
}


class ClusterError(LandmarkError, RuntimeError):
    """A node of the local cluster did not start (its log tail is in the message)."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on loopback now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Node:
    """One raylet: its resources, ports, and (once started) its process id."""

    num_cpus: float = 1
    resources: dict[str, float] = field(default_factory=dict)
    object_store_mb: int = 100
    ports: dict[str, int] = field(default_factory=dict)
    raylet_pid: int | None = None


def _ray_exe() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def _node_args(node: Node) -> list[str]:
    names = [
        "node-manager-port",
        "object-manager-port",
        "metrics-export-port",
        "runtime-env-agent-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
    ]
    node.ports.update(zip(names, free_ports(len(names) + 1)))
    lo = free_ports(1)[0]
    # each node its own range of worker ports, away from the others'
    args = [f"--{k}={v}" for k, v in node.ports.items() if k in names]
    args += [
        f"--num-cpus={node.num_cpus}",
        f"--resources={json.dumps(node.resources)}",
        f"--object-store-memory={node.object_store_mb * 2**20}",
        f"--node-ip-address={HOST}",
        f"--min-worker-port={lo}",
        f"--max-worker-port={lo + 60}",
        "--disable-usage-stats",
    ]
    return args


class LocalCluster:
    """Start with :meth:`start` (or ``with``); ``address`` is what ``ray.init(address=...)`` takes."""

    def __init__(
        self, workers: Sequence[dict[str, Any]], head_cpus: float = 0, *, system_config: dict[str, Any] | None = None
    ):
        self.head = Node(num_cpus=head_cpus)
        self.workers = [Node(**w) for w in workers]
        self.system_config = FAST_FAILURE_DETECTION if system_config is None else system_config
        self.temp_dir: Path | None = None
        self.address: str | None = None
        # token auth off: Ray turns it on for a head when ~/.ray/auth_token exists, but not for the nodes joining it
        self._env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")

    def _ray_start(self, args: list[str]) -> None:
        out = subprocess.run([_ray_exe(), "start", *args], env=self._env, capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise ClusterError(f"ray start {' '.join(args[:2])} failed:\n{(out.stdout + out.stderr)[-2000:]}")

    def start(self) -> LocalCluster:
        # a short path: Ray's unix sockets live under it (their paths are limited to ~107 bytes)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="lmray-"))
        port = free_ports(1)[0]
        try:
            self._ray_start(
                [
                    "--head",
                    f"--port={port}",
                    "--include-dashboard=false",
                    f"--temp-dir={self.temp_dir}",
                    f"--system-config={json.dumps(self.system_config)}",
                    *_node_args(self.head),
                ]
            )
            self.address = f"{HOST}:{port}"
            for node in self.workers:
                self._ray_start([f"--address={self.address}", *_node_args(node)])
            for node in [self.head, *self.workers]:
                node.raylet_pid = self._raylet_pid(node)
        except BaseException:
            self.stop()
            raise
        return self

    def _raylet_pid(self, node: Node) -> int:
        import psutil

        flag = f"--node_manager_port={node.ports['node-manager-port']}"
        for _ in range(100):
            for p in psutil.process_iter(["name", "cmdline"]):
                if "raylet" in (p.info["name"] or "") and flag in (p.info["cmdline"] or []):
                    return p.pid
            time.sleep(0.1)
        raise ClusterError(f"no raylet with {flag} found")

    def pids(self, node: Node) -> list[int]:
        """The raylet of ``node`` and every process under it (its workers and agents)."""
        import psutil

        if node.raylet_pid is None:
            return []
        try:
            raylet = psutil.Process(node.raylet_pid)
            return [raylet.pid, *(c.pid for c in raylet.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def kill_worker(self, i: int) -> list[int]:
        """SIGKILL worker node ``i``'s raylet and its processes (a lost machine); returns the pids killed."""
        node = self.workers[i]
        killed = self.pids(node)
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.raylet_pid = None
        return killed

    def stop(self) -> None:
        """Stop every node (``ray stop`` of this session's processes only) and remove the session folder."""
        for node in [*self.workers, self.head]:
            for pid in reversed(self.pids(node)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            node.raylet_pid = None
        self._kill_session_processes()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

    def _kill_session_processes(self) -> None:
        """The head's GCS and other processes started under this session's temporary folder."""
        import psutil

        if self.temp_dir is None:
            return
        mark = str(self.temp_dir)
        for p in psutil.process_iter(["cmdline"]):
            if p.pid != os.getpid() and any(mark in arg for arg in (p.info["cmdline"] or [])):
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
