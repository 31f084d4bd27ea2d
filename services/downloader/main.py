"""Entry point of the downloader process (`easel-downloader`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import partial

from easel.downloader.v1 import download_service_pb2, download_service_pb2_grpc
from services.common.server import ServiceServer, run_process
from services.downloader.download_queue import DownloadQueue
from services.downloader.job_store import DownloadJobStore
from services.downloader.servicer import DownloadServicer
from services.downloader.settings import DownloaderSettings

DOMAIN = "easel.downloader.v1"


async def build(server: ServiceServer, settings: DownloaderSettings) -> None:
    store = await DownloadJobStore.open(settings.database_url, settings.downloads_db_path)
    queue = DownloadQueue(store, settings)
    await queue.start()
    server.add_service(
        download_service_pb2, download_service_pb2_grpc, "DownloadService", DownloadServicer(queue)
    )
    server.on_stopping(queue.shutdown)

    async def close_store() -> None:
        await queue.close()
        await store.close()

    server.on_shutdown(close_store)


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    settings = DownloaderSettings.load(args, prog="easel-downloader")
    run_process(
        "downloader",
        DOMAIN,
        settings.downloader_address,
        settings,
        partial(build, settings=settings),
    )


if __name__ == "__main__":
    main()
