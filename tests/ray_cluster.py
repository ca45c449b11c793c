"""A local Ray cluster of real nodes for the tests: ``ray start --head``, then ``ray start --address`` for each further
node, each ``--block``ed in a process group of its own so that a node (its raylet and the workers it started) can be
killed alone, as a machine going away would, and the whole cluster is stopped by the test, never by ``ray stop``
(which ends every Ray process on the machine, other people's included).

Each node gets an address of its own in the loopback range (127.0.0.2, 127.0.0.3, …): Ray replaces 127.0.0.1 with the
machine's network address, and these tests talk to nothing but this machine. A driver started with ``env`` finds
the head node (the node of its own machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RayCluster:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit in 107 bytes
        # Its own token (Ray 2.60 turns token authentication on for a new cluster): nothing read from or written to
        # ~/.ray, and every node and driver given ``env`` is let in.
        import secrets

        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32), **(env or {})}
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.head_ip = "127.0.0.2"
        self.port = free_port(self.head_ip)

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.port}"

    def ray(self) -> str:
        return str(Path(sys.executable).with_name("ray"))

    def start_node(self, name: str, ip: str, cpus: int, resources: dict[str, float], timeout: float = 180) -> None:
        import json

        log = self.root / f"{name}.log"
        common = ["--block", f"--node-ip-address={ip}", f"--num-cpus={cpus}", f"--resources={json.dumps(resources)}",
                  "--object-store-memory=80000000", "--disable-usage-stats"]
        if not self.nodes:
            args = ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.root}",
                    f"--ray-client-server-port={free_port(ip)}", f"--dashboard-port={free_port(ip)}"]
        else:
            args = [f"--address={self.address}"]
        proc = subprocess.Popen([self.ray(), "start", *args, *common], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                env=self.env, start_new_session=True)
        self.nodes[name] = proc
        deadline = time.monotonic() + timeout
        while b"Ray runtime started" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def kill_node(self, name: str) -> None:
        """SIGKILL the node: its ``ray start``, raylet and agents (one process group) and every worker the raylet
        started (each in a process group of its own), as a machine going away would end them."""
        import psutil

        proc = self.nodes[name]
        try:
            descendants = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for child in descendants:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait()

    def stop(self) -> None:
        for name in reversed(list(self.nodes)):
            self.kill_node(name)
        shutil.rmtree(self.root, ignore_errors=True)
