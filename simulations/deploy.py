"""A local Flower deployment: one SuperLink and N SuperNodes on 127.0.0.1, started and stopped together.

This is what a user runs on real machines (``flower-superlink`` next to the server half,
``flower-supernode`` on each edge device), on one host with free ports, so that tests and the
deployment benchmark cross the same process and network boundaries as a real deployment.

``LocalDeployment`` is a context manager: on exit (also when the body raises) it stops every
process it started — each in its own process group, so the ``flwr-clientapp`` / ``flwr-serverapp``
children go too — and its ``flwr`` CLI configuration lives in a private ``FLWR_HOME``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from fl_split.launch import free_port  # re-exported: tests and benchmarks import it from here
from simulations.netns import ShapedNetwork, port_open

#: Name of the SuperLink connection written into the private ``FLWR_HOME/config.toml``.
CONNECTION = "fl-split-local"


class DeploymentError(RuntimeError):
    """A SuperLink or SuperNode did not start, or ``flwr run`` failed; the message says which and why."""


def _bin(name: str) -> str:
    """The Flower executable next to this interpreter (the venv's), else on ``PATH``."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise DeploymentError(f"{name} not found next to {sys.executable} or on PATH: install flwr[simulation]")
    return found


def _wait_for_port(
    port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout_s: float, netns: str | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeploymentError(f"{what} exited with code {proc.returncode}; its log ({log}):\n{_tail(log)}")
        if netns is not None:
            if port_open(netns, "127.0.0.1", port):
                return
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
        time.sleep(0.1)
    raise DeploymentError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s; log:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_config_arg(values: Mapping[str, Any]) -> str:
    """``flwr run --run-config`` text: ``key=value`` pairs in TOML syntax (strings quoted)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


class LocalDeployment:
    """``flower-superlink`` and ``num_supernodes`` × ``flower-supernode`` on free ports (``--insecure``, or TLS).

    Parameters
    ----------
    num_supernodes:
        SuperNodes to start; node ``i`` gets ``--node-config "partition-id=i num-partitions=N"``.
    workdir:
        Where logs and the private ``FLWR_HOME`` go.
    start_timeout_s:
        How long each process may take to listen on its port.
    network:
        A :class:`~simulations.netns.ShapedNetwork` (entered) to deploy across: the SuperLink (and so the
        ServerApp and its stream server) and ``flwr run`` in its server namespace, listening on every
        address there; SuperNode ``i`` (and its ClientApps) in node namespace ``i``, dialling the
        server's address over its shaped link. ``num_supernodes`` must equal its node count.
    tls:
        Run with TLS instead of ``--insecure``: certificates for 127.0.0.1 are made under
        ``workdir/certs`` (:func:`simulations.certs.make_certs`); the SuperLink serves them, the
        SuperNodes and ``flwr`` verify with the CA, and :attr:`certs` holds ``(ca, cert, key)`` for
        the stream transport's ``stream.ssl_*`` keys.
    threads:
        Intra-op threads for torch in every process the deployment starts (``OMP_NUM_THREADS`` and
        ``MKL_NUM_THREADS``, which the ServerApp and ClientApp processes inherit); ``None``: the
        caller's environment (torch's default, one per core, where it sets neither). Where several
        emulated machines share a few cores, one each keeps their thread pools from competing.
    """

    def __init__(
        self,
        num_supernodes: int,
        workdir: str | Path,
        start_timeout_s: float = 60.0,
        *,
        tls: bool = False,
        network: ShapedNetwork | None = None,
        threads: int | None = None,
    ) -> None:
        if num_supernodes < 1:
            raise ValueError(f"num_supernodes must be >= 1, got {num_supernodes}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 (or None to keep the caller's environment), got {threads}")
        if network is not None and len(network.nodes) != num_supernodes:
            raise ValueError(f"{num_supernodes} SuperNodes on a network of {len(network.nodes)} node links")
        self.network = network
        self.num_supernodes = num_supernodes
        self.workdir = Path(workdir).resolve()  # the SuperLink's children inherit it as their cwd
        self.start_timeout_s = start_timeout_s
        self.superlink_port = 0
        self.tls = tls
        self.certs: tuple[Path, Path, Path] | None = None
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.flwr_home = self.workdir / "flwr_home"
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            # the flwr-serverapp / flwr-clientapp children are found on PATH
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        if threads is not None:
            self.env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalDeployment:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _in(self, netns: str | None) -> list[str]:
        return ShapedNetwork.exec_prefix(netns) if netns else []

    def _spawn(self, what: str, args: list[str], netns: str | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.workdir / f"{what.replace(' ', '_')}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [*self._in(netns), *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
                start_new_session=True,
            )
        self.procs.append((what, proc))
        return proc, log

    def _start(self) -> None:
        self.superlink_port = free_port()
        security = ["--insecure"]
        node_security = ["--insecure"]
        connection_security = "insecure = true"
        if self.tls:
            from simulations.certs import make_certs

            hosts = ["127.0.0.1", "localhost", *([self.network.server_ip] if self.network else [])]
            self.certs = ca, cert, key = make_certs(self.workdir / "certs", hosts)
            security = ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
            node_security = ["--root-certificates", str(ca)]
            connection_security = f'root-certificates = "{ca}"'
        server_ns = self.network.server_netns if self.network else None
        link, log = self._spawn(
            "superlink",
            [
                _bin("flower-superlink"),
                *security,
                "--host",
                "0.0.0.0" if self.network else "127.0.0.1",  # in its own namespace: its addresses only
                "--port",
                str(self.superlink_port),
                "--disable-runtime-dependency-installation",
            ],
            server_ns,
        )
        _wait_for_port(self.superlink_port, link, "flower-superlink", log, self.start_timeout_s, server_ns)
        superlink = f"{self.network.server_ip if self.network else '127.0.0.1'}:{self.superlink_port}"
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.superlink_port}"\n{connection_security}\n',
            encoding="utf-8",
        )
        n = self.num_supernodes
        for i in range(n):
            port = free_port()
            node_ns = self.network.nodes[i].netns if self.network else None
            node, log = self._spawn(
                f"supernode {i}",
                [
                    _bin("flower-supernode"),
                    *node_security,
                    "--superlink",
                    superlink,
                    "--port",
                    str(port),
                    "--node-config",
                    f"partition-id={i} num-partitions={n}",
                ],
                node_ns,
            )
            _wait_for_port(port, node, f"flower-supernode {i}", log, self.start_timeout_s, node_ns)

    def stop(self) -> None:
        """Stop every process this deployment started (SIGTERM to its group, SIGKILL after 10 s).

        ``procs`` keeps them (with their exit codes) for inspection; calling it again is harmless.
        """
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10.0
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)

    # ------------------------------------------------------------------ runs
    def run(self, app_dir: str | Path, run_config: Mapping[str, Any], timeout_s: float = 900.0) -> str:
        """``flwr run APP fl-split-local --run-config ... --stream``; return its output.

        Raises
        ------
        DeploymentError
            If ``flwr run`` exits non-zero or does not finish within ``timeout_s`` (it is then killed).
        """
        args = [*self._in(self.network.server_netns if self.network else None)]
        args += [_bin("flwr"), "run", str(app_dir), CONNECTION, "--stream"]
        if run_config:
            args += ["--run-config", run_config_arg(run_config)]
        try:
            done = subprocess.run(
                args, env=self.env, cwd=app_dir, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"flwr run did not finish within {timeout_s:.0f} s") from exc
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise DeploymentError(f"flwr run exited with {done.returncode}:\n{output[-4000:]}")
        return output
