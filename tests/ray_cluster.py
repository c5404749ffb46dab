"""A real Ray cluster of several nodes on this machine, for the cluster tests.

Every node is a `ray start --block` process tree, the head and the workers alike, in a network
namespace of the test's own with nothing but loopback: Ray then gives each node the address
127.0.0.1 (outside such a namespace it picks the host's own address), nothing outside the namespace
can reach the cluster, and two test runs never share a port. Commands that talk to the cluster
(`retrain --ray_address ...`) run in the same namespace. A worker may be started blind to a folder
(a mount namespace with an empty tmpfs over it, as a node without the shared filesystem) and with
variables of its own; `kill` ends a node's whole process tree at once, as a lost machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import netns

PORT = 6379
ADDRESS = f"127.0.0.1:{PORT}"
RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT = 180  # seconds for the nodes to join; they take ~10 s on an idle 2-core machine
COUNT_NODES = (
    f"import ray; ray.init(address={ADDRESS!r}, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
)


def require_cluster_tools() -> None:
    """Skips where the namespace tools or Ray are missing (they are root's and `retrain[cluster]`'s)."""
    netns.require_namespaces()
    if not Path(RAY).exists():
        pytest.skip("Ray is not installed (pip install 'retrain[cluster]')")


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class RayCluster:
    namespace: str
    temp_dir: Path
    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)

    @classmethod
    def start(cls, workers: list[dict] | None = None, head_cpus: int = 2, head_env: dict | None = None) -> RayCluster:
        """A head with `head_cpus` CPUs (and the variables `head_env`) and one worker per dict in
        `workers` (keys: `cpus`, `env`, `blind_to`: a folder the worker cannot see)."""
        require_cluster_tools()
        namespace = netns.create("retrain-test")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
        cluster = cls(namespace, Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp")), env)  # short: socket paths
        try:
            cluster._start_node("head", ["--head", "--port", str(PORT), "--num-cpus", str(head_cpus)], head_env or {})
            cluster._wait_for_nodes(1)
            for number, worker in enumerate(workers or [], 1):
                args = ["--address", ADDRESS, "--num-cpus", str(worker.get("cpus", 1))]
                cluster._start_node(f"worker{number}", args, worker.get("env", {}), worker.get("blind_to"))
            cluster._wait_for_nodes(1 + len(workers or []))
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def add_worker(self, cpus: int = 1) -> None:
        """One more worker node, joined while the cluster runs (a replacement machine)."""
        self._start_node(f"worker{len(self.nodes)}", ["--address", ADDRESS, "--num-cpus", str(cpus)], {})
        self._wait_for_nodes(sum(node.process.poll() is None for node in self.nodes))

    def _start_node(self, name: str, args: list[str], env: dict[str, str], blind_to: Path | None = None) -> None:
        command = [RAY, "start", *args, "--node-ip-address", "127.0.0.1", "--block"]
        command += ["--temp-dir", str(self.temp_dir), "--disable-usage-stats"]
        if args[0] == "--head":
            command += ["--include-dashboard=false"]
        if blind_to is not None:  # a private mount namespace where `blind_to` is an empty tmpfs
            hide = f'mount -t tmpfs -o mode=0755 retrain-test-blind {blind_to} && exec "$@"'
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh", *command]
        log = self.temp_dir / f"{name}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                netns.command(self.namespace, command),
                env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.nodes.append(Node(name, process, log))

    def _wait_for_nodes(self, count: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            for node in self.nodes:
                if node.process.poll() is not None:
                    pytest.fail(f"Ray node {node.name} exited ({node.process.returncode}):\n{node.output()[-3000:]}")
            seen = self.run([sys.executable, "-c", COUNT_NODES], timeout=120)
            if seen.returncode == 0 and seen.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {node.name}\n{node.output()[-2000:]}" for node in self.nodes)
                pytest.fail(f"{count} Ray nodes did not come up in {START_TIMEOUT} s:\n{seen.stderr[-2000:]}\n{logs}")
            time.sleep(1)

    def command(self, args: list[str]) -> list[str]:
        """`args` as run inside the cluster's network namespace."""
        return netns.command(self.namespace, args)

    def run(self, args: list[str], timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(args), env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def popen(self, args: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(args), env=self.env, text=True, start_new_session=True, **kwargs)

    def kill(self, name: str) -> None:
        """Ends a node's every process at once (SIGKILL to its process group), as a machine lost."""
        node = next(node for node in self.nodes if node.name == name)
        os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=60)

    def stop(self) -> None:
        """Every process of the cluster ended, the namespace and the temporary folder removed."""
        for node in self.nodes:
            if node.process.poll() is None:
                os.killpg(node.process.pid, signal.SIGTERM)
        for node in self.nodes:
            try:
                node.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(timeout=30)
        netns.delete(self.namespace)  # with whatever Ray left behind (workers outlive their raylet briefly)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
