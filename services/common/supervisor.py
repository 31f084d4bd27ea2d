"""`easel-run` (what `make run` starts): the four processes as one suite.

It starts each service as its own process with the same flags, waits until every one
reports SERVING on its health service, prints where each listens, and then watches them.
On SIGINT/SIGTERM it stops them all (SIGTERM, then SIGKILL after the grace period) and
exits 0; if one dies on its own it stops the others and exits 1. Children also get
SIGTERM from the kernel if the supervisor itself is killed, so none is left orphaned.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.channels import open_channel
from services.common.settings import CommonSettings

READY_TIMEOUT_S = 180.0
"""How long the suite may take to become ready; inference imports torch meanwhile."""

KILL_MARGIN_S = 5.0
"""Time past a service's own grace period before it is killed."""

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ServiceProcess:
    """One of the suite's processes: its name, its entry module and the address it serves."""

    name: str
    module: str
    address: str


def suite(settings: CommonSettings) -> list[ServiceProcess]:
    return [
        ServiceProcess("downloader", "services.downloader.main", settings.downloader_address),
        ServiceProcess(
            "model_manager", "services.model_manager.main", settings.model_manager_address
        ),
        ServiceProcess("inference", "services.inference.main", settings.inference_address),
        ServiceProcess("invoker", "services.invoker.main", settings.invoker_address),
    ]


class Supervisor:
    """Starts, watches and stops the suite's processes."""

    def __init__(self, settings: CommonSettings, argv: Sequence[str]) -> None:
        self._settings = settings
        self._argv = list(argv)
        self._children: dict[str, asyncio.subprocess.Process] = {}
        self._stop = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        services = suite(self._settings)
        try:
            for service in services:
                self._children[service.name] = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    service.module,
                    *self._argv,
                    preexec_fn=_terminate_with_parent,
                )
            ready = await self._wait_until_ready(services)
            if ready:
                self._announce(services)
                died = await self._watch()
            else:
                died = True
        finally:
            await self._stop_children()
        failed = [name for name, child in self._children.items() if child.returncode != 0]
        if died or failed:
            print("easel: stopped the suite because a service failed", file=sys.stderr)
            return 1
        print("easel: stopped", flush=True)
        return 0

    async def _wait_until_ready(self, services: list[ServiceProcess]) -> bool:
        waits = [asyncio.create_task(self._serving(service)) for service in services]
        exits = [asyncio.create_task(child.wait()) for child in self._children.values()]
        stop = asyncio.create_task(self._stop.wait())
        pending = set(waits)
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                while pending:
                    done, _ = await asyncio.wait(
                        [*pending, *exits, stop], return_when=asyncio.FIRST_COMPLETED
                    )
                    if stop in done or any(task in done for task in exits):
                        return False
                    pending -= done
        except TimeoutError:
            print(f"easel: the suite was not ready within {READY_TIMEOUT_S:.0f} s", file=sys.stderr)
            return False
        finally:
            for task in [*waits, *exits, stop]:
                task.cancel()
        return True

    async def _serving(self, service: ServiceProcess) -> None:
        """Return once `service` reports SERVING; retry while it is not listening yet."""
        serving = health_pb2.HealthCheckResponse.SERVING
        async with open_channel(
            service.address, self._settings, reconnect_backoff_ms=50
        ) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    request = health_pb2.HealthCheckRequest(service="")
                    async for update in health.Watch(request, wait_for_ready=True):
                        if update.status == serving:
                            return
                except aio.AioRpcError:
                    await asyncio.sleep(0.1)

    def _announce(self, services: list[ServiceProcess]) -> None:
        print("easel: the suite is serving", flush=True)
        for service in services:
            pid = self._children[service.name].pid
            print(f"  {service.name:<14} {service.address:<22} pid {pid}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)

    async def _watch(self) -> bool:
        """Wait for a stop request (False) or a child's death (True)."""
        exits = {asyncio.create_task(child.wait()): name for name, child in self._children.items()}
        stop = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([*exits, stop], return_when=asyncio.FIRST_COMPLETED)
        for task in [*exits, stop]:
            task.cancel()
        for task in done:
            if task in exits:
                code = self._children[exits[task]].returncode
                print(f"easel: {exits[task]} exited with code {code}", file=sys.stderr)
                return True
        return False

    async def _stop_children(self) -> None:
        running = [child for child in self._children.values() if child.returncode is None]
        for child in running:
            child.send_signal(signal.SIGTERM)
        deadline = self._settings.shutdown_grace_s + KILL_MARGIN_S
        try:
            async with asyncio.timeout(deadline):
                await asyncio.gather(*(child.wait() for child in running))
        except TimeoutError:
            for child in running:
                if child.returncode is None:
                    child.kill()
            await asyncio.gather(*(child.wait() for child in running))


def _terminate_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the supervisor dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: children stop with the supervisor's normal shutdown only


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    settings = CommonSettings.load(argv, prog="easel-run")
    sys.exit(asyncio.run(Supervisor(settings, argv).run()))


if __name__ == "__main__":
    main()
