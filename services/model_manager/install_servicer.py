"""ModelInstallService over gRPC: each RPC is one call into the installer.

Probing, hashing and moving files block, so those calls run in worker threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from grpc import aio

from easel.model_manager.v1 import model_install_service_pb2 as pb
from easel.model_manager.v1 import model_install_service_pb2_grpc
from services.common import paging
from services.model_manager import install_convert as convert
from services.model_manager import record_convert
from services.model_manager.install.download_cache import DownloadCache
from services.model_manager.install.installer import ModelInstaller
from services.model_manager.records.metadata import metadata_of
from services.model_manager.records.record_store import ModelRecordStore


class ModelInstallServicer(model_install_service_pb2_grpc.ModelInstallServiceServicer):
    def __init__(
        self, installer: ModelInstaller, cache: DownloadCache, store: ModelRecordStore
    ) -> None:
        self._installer = installer
        self._cache = cache
        self._store = store

    async def ProbeModel(
        self, request: pb.ProbeModelRequest, context: aio.ServicerContext
    ) -> pb.ProbeModelResponse:
        config = await asyncio.to_thread(
            self._installer.probe,
            request.path,
            convert.config_dict(request.config),
            request.compute_hash,
        )
        model = record_convert.config_to_pb(config)
        for unset in ("key", "create_time", "update_time"):  # nothing was registered
            model.ClearField(unset)
        return pb.ProbeModelResponse(model=model)

    async def CreateInstallJob(
        self, request: pb.CreateInstallJobRequest, context: aio.ServicerContext
    ) -> pb.CreateInstallJobResponse:
        source = convert.install_source(request)
        job = await self._installer.import_model(source, convert.config_dict(request.config))
        return pb.CreateInstallJobResponse(job=convert.install_job_to_pb(job))

    async def GetInstallJob(
        self, request: pb.GetInstallJobRequest, context: aio.ServicerContext
    ) -> pb.GetInstallJobResponse:
        job = self._installer.get_job(request.id)
        return pb.GetInstallJobResponse(job=convert.install_job_to_pb(job))

    async def ListInstallJobs(
        self, request: pb.ListInstallJobsRequest, context: aio.ServicerContext
    ) -> pb.ListInstallJobsResponse:
        statuses = convert.install_statuses(list(request.statuses))
        fingerprint = [request.source, sorted(status.value for status in statuses)]
        jobs, next_token = paging.paginate(
            self._installer.list_jobs(convert.source_filter(request.source), statuses),
            request.page_size,
            request.page_token,
            fingerprint,
        )
        return pb.ListInstallJobsResponse(
            jobs=[convert.install_job_to_pb(job) for job in jobs], next_page_token=next_token
        )

    async def CancelInstallJob(
        self, request: pb.CancelInstallJobRequest, context: aio.ServicerContext
    ) -> pb.CancelInstallJobResponse:
        job = await self._installer.cancel_job(request.id)
        return pb.CancelInstallJobResponse(job=convert.install_job_to_pb(job))

    async def PruneInstallJobs(
        self, request: pb.PruneInstallJobsRequest, context: aio.ServicerContext
    ) -> pb.PruneInstallJobsResponse:
        return pb.PruneInstallJobsResponse(pruned_job_ids=await self._installer.prune_jobs())

    async def WaitInstallJob(
        self, request: pb.WaitInstallJobRequest, context: aio.ServicerContext
    ) -> pb.WaitInstallJobResponse:
        job = await self._installer.wait_job(request.id)
        return pb.WaitInstallJobResponse(job=convert.install_job_to_pb(job))

    async def WaitAllInstallJobs(
        self, request: pb.WaitAllInstallJobsRequest, context: aio.ServicerContext
    ) -> pb.WaitAllInstallJobsResponse:
        jobs = await self._installer.wait_all()
        return pb.WaitAllInstallJobsResponse(jobs=[convert.install_job_to_pb(j) for j in jobs])

    async def WatchInstallJobs(
        self, request: pb.WatchInstallJobsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.WatchInstallJobsResponse]:
        async for delivery in self._installer.watch(request.job_ids):
            yield convert.install_event_to_pb(delivery.event, delivery.dropped_before)

    async def RegisterPath(
        self, request: pb.RegisterPathRequest, context: aio.ServicerContext
    ) -> pb.RegisterPathResponse:
        config = await asyncio.to_thread(
            self._installer.register_path, request.path, convert.config_dict(request.config)
        )
        return pb.RegisterPathResponse(model=record_convert.config_to_pb(config))

    async def InstallPath(
        self, request: pb.InstallPathRequest, context: aio.ServicerContext
    ) -> pb.InstallPathResponse:
        config = await asyncio.to_thread(
            self._installer.install_path, request.path, convert.config_dict(request.config)
        )
        return pb.InstallPathResponse(model=record_convert.config_to_pb(config))

    async def UninstallModel(
        self, request: pb.UninstallModelRequest, context: aio.ServicerContext
    ) -> pb.UninstallModelResponse:
        mode = convert.uninstall_mode(request.mode)
        key = record_convert.required_key(request.key)
        done = await asyncio.to_thread(self._installer.uninstall, key, mode)
        return pb.UninstallModelResponse(
            model=record_convert.config_to_pb(done.config),
            files_deleted=done.files_deleted,
            path=str(done.path),
        )

    async def DownloadAndCache(
        self, request: pb.DownloadAndCacheRequest, context: aio.ServicerContext
    ) -> pb.DownloadAndCacheResponse:
        cached = await self._cache.get(request.source, request.access_token)
        return pb.DownloadAndCacheResponse(
            local_path=str(cached.path), cached=cached.cached, size_bytes=cached.size_bytes
        )

    async def SyncModels(
        self, request: pb.SyncModelsRequest, context: aio.ServicerContext
    ) -> pb.SyncModelsResponse:
        report = await asyncio.to_thread(
            self._installer.sync, request.remove_missing, request.dry_run, request.register_new
        )
        return convert.sync_to_pb(report)

    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.GetModelMetadataResponse:
        config = await asyncio.to_thread(self._store.get, record_convert.required_key(request.key))
        return pb.GetModelMetadataResponse(
            metadata=record_convert.metadata_to_pb(metadata_of(config))
        )
