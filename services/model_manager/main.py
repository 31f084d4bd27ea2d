"""Entry point of the model manager process (`easel-model-manager`)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from functools import partial

import structlog

from easel.model_manager.v1 import (
    model_install_service_pb2,
    model_install_service_pb2_grpc,
    model_record_service_pb2,
    model_record_service_pb2_grpc,
)
from services.common.server import ServiceServer, run_process
from services.model_manager.install.download_cache import DownloadCache
from services.model_manager.install.downloader_client import DownloaderClient
from services.model_manager.install.hf_repo import HuggingFaceRepo
from services.model_manager.install.installer import ModelInstaller
from services.model_manager.install.job_store import InstallJobStore
from services.model_manager.install_servicer import ModelInstallServicer
from services.model_manager.record_servicer import ModelRecordServicer
from services.model_manager.records.open_store import open_record_store
from services.model_manager.settings import ModelManagerSettings

DOMAIN = "easel.model_manager.v1"

log = structlog.get_logger(__name__)


async def build(server: ServiceServer, settings: ModelManagerSettings) -> None:
    store = await asyncio.to_thread(
        open_record_store, settings.model_config_db, settings.database_url
    )
    downloads = DownloaderClient(settings, settings.downloader_reconnect_s)
    hub = HuggingFaceRepo(settings.hf_endpoint)
    job_store = await InstallJobStore.open(settings.database_url, settings.install_jobs_db)
    installer = ModelInstaller(settings, store, downloads, hub, job_store)
    cache_folder = settings.models_dir / ".cache" / "downloads"
    cache = DownloadCache(cache_folder, settings.download_cache_bytes, downloads, hub)
    await installer.resume()  # first: a half-placed model must go before the sync sees it
    report = await asyncio.to_thread(
        installer.sync,
        remove_missing=settings.remove_missing_models,
        dry_run=False,
        register_new=settings.register_found_models,
    )
    for config, removed in report.missing:
        log.warning("model files missing", key=config.key, path=config.path, removed=removed)
    for config, registered in report.found:
        if registered:
            log.info("registered a model found in models_dir", key=config.key, path=config.path)
        else:
            log.info("found a model without a record (not registered)", path=config.path)
    for path, error in report.failed:
        log.warning("not a model", path=str(path), reason=error.reason, error=error.message)
    server.add_service(
        model_record_service_pb2,
        model_record_service_pb2_grpc,
        "ModelRecordService",
        ModelRecordServicer(store, settings.models_dir),
    )
    server.add_service(
        model_install_service_pb2,
        model_install_service_pb2_grpc,
        "ModelInstallService",
        ModelInstallServicer(installer, cache, store),
    )
    server.on_stopping(installer.shutdown)

    async def close() -> None:
        await downloads.close()
        await job_store.close()
        store.close()

    server.on_shutdown(close)


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    settings = ModelManagerSettings.load(args, prog="easel-model-manager")
    run_process(
        "model_manager",
        DOMAIN,
        settings.model_manager_address,
        settings,
        partial(build, settings=settings),
    )


if __name__ == "__main__":
    main()
