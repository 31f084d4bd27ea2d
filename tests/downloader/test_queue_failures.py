"""The queue in-process, meeting failures no transfer plans for: every job still ends."""

from __future__ import annotations

import asyncio

import pytest

from services.common import errors
from services.downloader import download_queue
from services.downloader.download_queue import DownloadQueue
from services.downloader.job_requests import NewDownload
from services.downloader.job_store import DownloadJobStore
from services.downloader.jobs import DownloadJobStatus
from services.downloader.settings import DownloaderSettings


async def test_an_unexpected_failure_ends_the_job_even_when_clean_up_fails(
    database_url: str, tmp_path, monkeypatch
):
    root = tmp_path / "root"
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.bin").write_bytes(b"a" * 1000)
    database = root / "downloads.db"
    store = await DownloadJobStore.open(database_url, database)
    queue = DownloadQueue(store, DownloaderSettings(root=root, free_space_reserve_bytes=0))
    await queue.start()

    def broken(*_args: object) -> None:
        raise RuntimeError("the disk controller is on fire")

    # The copy fails, and so does removing its partial data afterwards.
    monkeypatch.setattr(download_queue, "copy_tree", broken)
    monkeypatch.setattr(download_queue, "remove_tree", broken)
    try:
        job = await queue.create(NewDownload(source=str(root / "src"), dest_dir=str(root / "d")))
        ended = await asyncio.wait_for(queue.wait(job.id), 10)
        assert (ended.status, ended.error_type) == (DownloadJobStatus.ERROR, "INTERNAL")
        assert "the disk controller is on fire" in ended.error
        with pytest.raises(errors.FailedPreconditionError):
            await queue.cancel_job(job.id)
    finally:
        await queue.shutdown()
        await queue.close()
        await store.close()
    reopened = await DownloadJobStore.open(database_url, database)
    assert [stored.status for stored in await reopened.load_all()] == [DownloadJobStatus.ERROR]
    await reopened.close()
