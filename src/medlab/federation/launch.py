"""Start a hub and node agents as separate processes on this machine (loopback only).

The demo and the integration tests use it: each party is its own ``medlab`` process, as
it would be on its own machine; they talk over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def medlab(*args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """``medlab ARGS`` as a child process (its output into ``log``)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "medlab.cli.main", *args]
    if log is None:
        return subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def start_hub(
    directory: Path, port: int, log: Path | None = None, db: str | None = None
) -> subprocess.Popen[bytes]:
    """``medlab hub serve DIR`` on 127.0.0.1:port (``db``: its database URL), once it
    answers."""
    extra = () if db is None else ("--db", db)
    process = medlab(
        "hub", "serve", str(directory), "--host", LOOPBACK, "--port", str(port), *extra, log=log
    )
    wait_for(f"http://{LOOPBACK}:{port}", process)
    return process


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until ``url`` answers its health check (or the process died, or ``timeout``)."""
    until = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:  # one client: each new one loads the CA bundle
        while time.monotonic() < until:
            if process.poll() is not None:
                raise RuntimeError(f"the process ended with {process.returncode}")
            try:
                if client.get(f"{url}/api/v1/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:g} s")


def start_agent(
    store: Path, url: str, log: Path | None = None, wait: float = 2.0
) -> subprocess.Popen[bytes]:
    """``medlab node agent STORE --hub URL`` (long polls of ``wait`` seconds)."""
    return medlab("node", "agent", str(store), "--hub", url, "--wait", str(wait), log=log)


def stop(process: subprocess.Popen[bytes], kill: bool = False) -> None:
    """End a child process (SIGTERM, or SIGKILL with ``kill``) and wait for it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
