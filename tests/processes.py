"""Real Easel processes on loopback for tests and benchmarks, each suite with its own root."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
SERVICE_MODULES = {
    "downloader": "services.downloader.main",
    "model_manager": "services.model_manager.main",
    "inference": "services.inference.main",
    "invoker": "services.invoker.main",
}
READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def suite_env(root: Path, **overrides: str) -> dict[str, str]:
    """Environment for a test suite of processes: its own root and free loopback ports."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EASEL_")}
    env.update(
        EASEL_ROOT=str(root),
        EASEL_LOG_FORMAT="json",
        EASEL_TORCH_THREADS="1",
        EASEL_SHUTDOWN_GRACE_S="2",
        **{f"EASEL_{name.upper()}_ADDRESS": f"127.0.0.1:{free_port()}" for name in SERVICE_MODULES},
    )
    env.update(overrides)
    return env


@dataclass
class ServiceProcess:
    """A service started as its own process, as `easel-<name>` would start it."""

    name: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_service(
    name: str, env: dict[str, str], log_dir: Path, args: list[str] | None = None
) -> ServiceProcess:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", SERVICE_MODULES[name], *(args or [])],
            env=env,
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    address = env[f"EASEL_{name.upper()}_ADDRESS"]
    return ServiceProcess(name, address, process, log_path)


def wait_serving(
    service: ServiceProcess,
    timeout: float = READY_TIMEOUT_S,
    credentials: grpc.ChannelCredentials | None = None,
    poll_s: float = 0.02,
) -> float:
    """Poll health until SERVING; return the seconds since the process started."""
    deadline = time.monotonic() + timeout
    # Retry a refused connection quickly instead of after gRPC's default 1 s backoff.
    options = [
        ("grpc.initial_reconnect_backoff_ms", 5),
        ("grpc.min_reconnect_backoff_ms", 5),
        ("grpc.max_reconnect_backoff_ms", 20),
    ]
    channel = (
        grpc.insecure_channel(service.address, options)
        if credentials is None
        else grpc.secure_channel(service.address, credentials, options)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise AssertionError(f"{service.name} exited early:\n{service.log()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - service.started_at
            except grpc.RpcError:
                pass
            time.sleep(poll_s)
    raise AssertionError(f"{service.name} not SERVING within {timeout} s:\n{service.log()}")
