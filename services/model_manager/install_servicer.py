"""ModelInstallService over gRPC: each RPC is one call into the installer.

Probing, hashing and moving files block, so those calls run in worker threads.
"""

from __future__ import annotations

import asyncio

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

    async def ProbeModel(self, request, context):
        config = await asyncio.to_thread(
            self._installer.probe,
            request.path,
            convert.config_dict(request.config),
            request.compute_hash,
        )
        return pb.ProbeModelResponse(model=record_convert.config_to_pb(config))

    async def CreateInstallJob(self, request, context):
        source = convert.install_source(request)
        job = self._installer.import_model(source, convert.config_dict(request.config))
        return pb.CreateInstallJobResponse(job=convert.install_job_to_pb(job))

    async def GetInstallJob(self, request, context):
        job = self._installer.get_job(request.id)
        return pb.GetInstallJobResponse(job=convert.install_job_to_pb(job))

    async def ListInstallJobs(self, request, context):
        statuses = convert.install_statuses(list(request.statuses))
        size = paging.page_size(request.page_size)
        fingerprint = [request.source, sorted(status.value for status in statuses)]
        offset = paging.page_offset(request.page_token, fingerprint)
        jobs = self._installer.list_jobs(request.source, statuses)
        more = offset + size < len(jobs)
        return pb.ListInstallJobsResponse(
            jobs=[convert.install_job_to_pb(job) for job in jobs[offset : offset + size]],
            next_page_token=paging.next_page_token(offset + size, fingerprint) if more else "",
        )

    async def CancelInstallJob(self, request, context):
        job = await self._installer.cancel_job(request.id)
        return pb.CancelInstallJobResponse(job=convert.install_job_to_pb(job))

    async def PruneInstallJobs(self, request, context):
        return pb.PruneInstallJobsResponse(pruned_job_ids=self._installer.prune_jobs())

    async def WaitInstallJob(self, request, context):
        job = await self._installer.wait_job(request.id)
        return pb.WaitInstallJobResponse(job=convert.install_job_to_pb(job))

    async def WaitAllInstallJobs(self, request, context):
        jobs = await self._installer.wait_all()
        return pb.WaitAllInstallJobsResponse(jobs=[convert.install_job_to_pb(j) for j in jobs])

    async def WatchInstallJobs(self, request, context):
        async for delivery in self._installer.watch(request.job_ids):
            yield convert.install_event_to_pb(delivery.event, delivery.dropped_before)

    async def RegisterPath(self, request, context):
        config = await asyncio.to_thread(
            self._installer.register_path, request.path, convert.config_dict(request.config)
        )
        return pb.RegisterPathResponse(model=record_convert.config_to_pb(config))

    async def InstallPath(self, request, context):
        config = await asyncio.to_thread(
            self._installer.install_path, request.path, convert.config_dict(request.config)
        )
        return pb.InstallPathResponse(model=record_convert.config_to_pb(config))

    async def UninstallModel(self, request, context):
        mode = convert.uninstall_mode(request.mode)
        key = record_convert.required_key(request.key)
        done = await asyncio.to_thread(self._installer.uninstall, key, mode)
        return pb.UninstallModelResponse(
            model=record_convert.config_to_pb(done.config),
            files_deleted=done.files_deleted,
            path=str(done.path),
        )

    async def DownloadAndCache(self, request, context):
        cached = await self._cache.get(request.source, request.access_token)
        return pb.DownloadAndCacheResponse(
            local_path=str(cached.path), cached=cached.cached, size_bytes=cached.size_bytes
        )

    async def SyncModels(self, request, context):
        report = await asyncio.to_thread(
            self._installer.sync, request.remove_missing, request.dry_run, request.register_new
        )
        return convert.sync_to_pb(report)

    async def GetModelMetadata(self, request, context):
        config = await asyncio.to_thread(self._store.get, record_convert.required_key(request.key))
        return pb.GetModelMetadataResponse(
            metadata=record_convert.metadata_to_pb(metadata_of(config))
        )
