"""Entry point of the downloader process (`easel-downloader`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from easel.downloader.v1 import download_service_pb2, download_service_pb2_grpc
from services.common.server import ServiceServer, run_process
from services.common.settings import CommonSettings

DOMAIN = "easel.downloader.v1"


async def build(server: ServiceServer) -> None:
    server.add_service(download_service_pb2, download_service_pb2_grpc, "DownloadService")


def main(argv: Sequence[str] | None = None) -> None:
    settings = CommonSettings.load(sys.argv[1:] if argv is None else argv, prog="easel-downloader")
    run_process("downloader", DOMAIN, settings.downloader_address, settings, build)


if __name__ == "__main__":
    main()
