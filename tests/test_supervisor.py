"""`make run`: the supervisor brings the four services up, and down, as one suite."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.processes import REPO, SERVICE_MODULES, address_key, free_port

READY_LINE = "Press Ctrl-C to stop."


class SuiteProcess:
    """A running supervisor whose stdout lines are collected as they come."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for_line(self, text: str, timeout: float = 180) -> None:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no line {text!r}; output so far:\n{''.join(self.output)}")
            if text in line:
                return

    def child_pids(self) -> dict[str, int]:
        return {
            match[1]: int(match[2])
            for match in re.finditer(r"^\s+(\w+)\s+\S+\s+pid (\d+)$", "".join(self.output), re.M)
        }

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting to be reaped has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until_gone(pids: dict[str, int], timeout: float = 15) -> list[str]:
    """Names of the processes still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid in pids.values()):
        time.sleep(0.05)
    return [name for name, pid in pids.items() if alive(pid)]


def assert_all_serving(env: dict[str, str]) -> None:
    for name in SERVICE_MODULES:
        with grpc.insecure_channel(env[address_key(name)]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


@pytest.fixture
def suite_env(easel_env: dict[str, str]) -> dict[str, str]:
    """The supervisor serves the configured addresses, as `make run` does: give it free
    ports, not port 0."""
    easel_env.update({address_key(name): f"127.0.0.1:{free_port()}" for name in SERVICE_MODULES})
    return easel_env


@pytest.fixture
def suite(suite_env):
    started: list[SuiteProcess] = []

    def start(command: list[str]) -> SuiteProcess:
        started.append(SuiteProcess(command, suite_env))
        return started[-1]

    yield start
    for process in started:
        process.kill_group()


def test_make_run_starts_the_suite_and_ctrl_c_stops_it(suite, suite_env):
    run = suite(["make", "--no-print-directory", "run"])
    run.wait_for_line(READY_LINE)
    pids = run.child_pids()
    assert set(pids) == set(SERVICE_MODULES)
    for name in SERVICE_MODULES:
        assert suite_env[address_key(name)] in "".join(run.output)
    assert_all_serving(suite_env)

    os.killpg(run.process.pid, signal.SIGINT)  # what Ctrl-C does to the foreground group
    run.process.wait(timeout=30)
    run.wait_for_line("easel: stopped", timeout=5)
    assert wait_until_gone(pids) == []


def test_sigterm_stops_every_service_and_exits_zero(suite):
    run = suite([sys.executable, "-m", "services.common.supervisor"])
    run.wait_for_line(READY_LINE)
    pids = run.child_pids()
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=30) == 0
    assert wait_until_gone(pids) == []


def test_a_dead_service_stops_the_suite_with_an_error(suite):
    run = suite([sys.executable, "-m", "services.common.supervisor"])
    run.wait_for_line(READY_LINE)
    pids = run.child_pids()
    os.kill(pids["downloader"], signal.SIGKILL)
    assert run.process.wait(timeout=30) == 1
    assert "downloader exited with code -9" in "".join(run.output)
    assert wait_until_gone(pids) == []


def test_a_killed_supervisor_leaves_no_orphan(suite):
    run = suite([sys.executable, "-m", "services.common.supervisor"])
    run.wait_for_line(READY_LINE)
    pids = run.child_pids()
    run.process.kill()
    run.process.wait()
    assert wait_until_gone(pids) == []
