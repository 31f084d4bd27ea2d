"""A suite of Easel services started as real processes on one root, as the end-to-end
suites run them: every process started first and then waited for, so they come up side by
side, and all stopped, last started first, however the suite ends."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.common.settings import CommonSettings
from tests.conftest import SUITE_TOKEN
from tests.processes import (
    ServiceProcess,
    address_key,
    client_settings,
    start_service,
    suite_env,
    wait_serving,
)


@dataclass
class RunningSuite:
    env: dict[str, str]
    """The suite's environment, holding every service's address."""
    services: list[ServiceProcess]
    """Every process of the suite, in the order they started."""

    @property
    def root(self) -> Path:
        return Path(self.env["EASEL_ROOT"])

    @property
    def settings(self) -> CommonSettings:
        """Settings of a client of the suite, its token included."""
        return client_settings(self.env)

    def started(self, name: str) -> list[ServiceProcess]:
        """The processes of the service `name`, in the order they started."""
        return [service for service in self.services if service.name == name]


@contextmanager
def running_suite(
    folder: Path,
    names: Iterable[str],
    *,
    inference_workers: int = 1,
    invokers: int = 1,
    **env: str,
) -> Iterator[RunningSuite]:
    """Start the services `names`, in that order, on a root in `folder` with the suite's
    token and the settings `env` (EASEL_… variables), and yield once all are SERVING.

    Several `inference_workers` each have a root of their own in `folder`, and the suite's
    inference address lists them all, so an invoker started after them balances over them.
    Several `invokers` share the suite's root and database; each one's `env` holds its
    address, the suite's names none of them.
    """
    root = folder / "root"
    root.mkdir()
    suite = RunningSuite(suite_env(root, EASEL_AUTH_TOKEN=SUITE_TOKEN, **env), [])
    try:
        for name in names:
            count = {"inference": inference_workers, "invoker": invokers}.get(name, 1)
            if count == 1:
                suite.services.append(start_service(name, suite.env, folder))
            else:
                _start_several(suite, name, count, folder)
        for service in suite.services:
            wait_serving(service)
        yield suite
    finally:
        for service in reversed(suite.services):
            service.stop()


def _start_several(suite: RunningSuite, name: str, count: int, folder: Path) -> None:
    """Start `count` processes of the service `name`, each from a copy of the suite's
    environment, so that each binds a port of its own and records it in its copy."""
    several = []
    for index in range(1, count + 1):
        env = dict(suite.env)
        if name == "inference":
            worker_root = folder / f"worker-{index}"
            worker_root.mkdir()
            env["EASEL_ROOT"] = str(worker_root)
        several.append(start_service(name, env, folder))
        suite.services.append(several[-1])
    if name == "inference":
        suite.env[address_key(name)] = ",".join(worker.address for worker in several)
