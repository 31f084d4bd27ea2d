"""A suite of real processes for install tests: the model manager and the downloader, with
a HuggingFace Hub stand-in and a plain HTTP host as the remote side (the `suite` fixture)."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from easel.downloader.v1 import download_service_pb2_grpc
from easel.model_manager.v1 import model_install_service_pb2 as pb
from easel.model_manager.v1 import (
    model_install_service_pb2_grpc,
    model_pb2,
    model_record_service_pb2_grpc,
)
from easel.model_manager.v1 import model_record_service_pb2 as records_pb
from services.common.error_status import from_rpc_error
from tests.hf_hub import HubStandIn
from tests.processes import ServiceProcess, address_key, start_service, wait_serving
from tests.remote_host import RemoteHost

GATE_TOKEN = "hf_gate_token"


async def until(condition: Callable[[], Awaitable[object]]):
    """Poll `condition` until it returns something true (for states in the middle of a
    transfer, which no event marks); that value."""
    for _ in range(6000):
        if value := await condition():
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("the condition was not met within a minute")


def publish(hub_root: Path, repo_id: str, *folders: Path, tags=(), gated: bool = False) -> None:
    """Put a repository on the hub stand-in: the files of `folders`, merged."""
    target = hub_root / repo_id
    for folder in folders:
        if folder.is_dir():
            shutil.copytree(folder, target, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder, target / folder.name)
    if tags:
        (target / ".tags").write_text("\n".join(tags))
    if gated:
        (target / ".gated").write_text(GATE_TOKEN)


@dataclass
class Suite:
    """The processes of one test, and what a test does with them."""

    root: Path
    models_dir: Path
    env: dict[str, str]
    log_dir: Path
    hub: HubStandIn
    remote: RemoteHost
    downloader: ServiceProcess
    model_manager: ServiceProcess
    install: model_install_service_pb2_grpc.ModelInstallServiceStub = None  # type: ignore[assignment]
    records: model_record_service_pb2_grpc.ModelRecordServiceStub = None  # type: ignore[assignment]
    downloads: download_service_pb2_grpc.DownloadServiceStub = None  # type: ignore[assignment]
    _channels: tuple[grpc.aio.Channel, ...] = ()

    async def connect(self) -> None:
        """(Re)open the channels to the current processes."""
        await self.disconnect()
        manager, downloader = self.model_manager.channel(), self.downloader.channel()
        self._channels = (manager, downloader)
        self.install = model_install_service_pb2_grpc.ModelInstallServiceStub(manager)
        self.records = model_record_service_pb2_grpc.ModelRecordServiceStub(manager)
        self.downloads = download_service_pb2_grpc.DownloadServiceStub(downloader)

    async def disconnect(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels = ()

    async def start(self, name: str, address: str = "127.0.0.1:0") -> ServiceProcess:
        """Start the service `name` (again), on a fresh port unless `address` names one, and
        wait until it serves."""
        self.env[address_key(name)] = address
        service = await asyncio.to_thread(start_service, name, self.env, self.log_dir)
        await asyncio.to_thread(wait_serving, service)
        setattr(self, name, service)
        return service

    async def restart_model_manager(self) -> None:
        """Start the model manager again (the downloader keeps its address) and reconnect."""
        await self.start("model_manager")
        await self.connect()

    async def restart_downloader(self) -> None:
        """kill -9 the downloader and start it again where the model manager calls it."""
        address = self.downloader.address
        self.kill(self.downloader)
        await self.start("downloader", address)
        await self.connect()

    def kill(self, service: ServiceProcess) -> None:
        """kill -9: no shutdown of any kind."""
        service.process.send_signal(signal.SIGKILL)
        service.process.wait()

    async def call(self, stub, method: str, request, deadline: float = 60):
        try:
            return await getattr(stub, method)(request, timeout=deadline)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    async def create(self, config: dict | None = None, **fields) -> pb.InstallJob:
        request = pb.CreateInstallJobRequest(**fields)
        if config:
            request.config.update(config)
        return (await self.call(self.install, "CreateInstallJob", request)).job

    async def job(self, job_id: int) -> pb.InstallJob:
        request = pb.GetInstallJobRequest(id=job_id)
        return (await self.call(self.install, "GetInstallJob", request)).job

    async def wait(self, job_id: int) -> pb.InstallJob:
        request = pb.WaitInstallJobRequest(id=job_id)
        return (await self.call(self.install, "WaitInstallJob", request)).job

    async def install_and_wait(self, config: dict | None = None, **fields) -> pb.InstallJob:
        return await self.wait((await self.create(config, **fields)).id)

    async def models(self) -> list[model_pb2.ModelConfig]:
        listed = await self.call(self.records, "ListModels", records_pb.ListModelsRequest())
        return list(listed.models)

    def files(self) -> list[str]:
        """Everything in models_dir, staging and caches included, as relative paths."""
        return sorted(
            str(p.relative_to(self.models_dir)) for p in self.models_dir.rglob("*") if p.is_file()
        )

    def staging(self) -> list[str]:
        """What the install staging folder holds (folders and files)."""
        staging = self.models_dir / ".cache" / "installs"
        return sorted(p.name for p in staging.iterdir()) if staging.is_dir() else []

    def source(self, model: Path) -> Path:
        """A copy of a zoo model under the root, where local sources may come from."""
        copy = self.root / "sources" / model.name
        if model.is_dir():
            shutil.copytree(model, copy)
        else:
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(model, copy)
        return copy
