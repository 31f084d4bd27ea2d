"""Installs and the downloader service: the downloader down or gone mid-download, a download
cancelled by another client, and concurrent requests for the same remote file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from easel.downloader.v1 import download_service_pb2 as download_pb
from easel.model_manager.v1 import model_install_service_pb2 as pb
from services.common import errors
from tests.model_fixtures import write_sparse_checkpoint
from tests.model_manager.install_suite import Suite, until


def serve(suite: Suite, tmp_path: Path, name: str = "big.safetensors") -> str:
    """A 4 MiB sd-1 checkpoint on the remote host; its path there (`/slow/` sends it in
    64 KiB steps, about 3 s)."""
    model = write_sparse_checkpoint(tmp_path / name, 4 * 1024 * 1024)
    suite.remote.files[name] = model.read_bytes()
    return name


async def downloading(suite: Suite, job_id: int) -> pb.InstallJob:
    """The job, once its download job exists and bytes have arrived."""

    async def started() -> pb.InstallJob | None:
        job = await suite.job(job_id)
        return job if job.download_job_ids and job.bytes > 0 else None

    return await until(started)


async def test_with_the_downloader_down_remote_sources_fail_cleanly(suite: Suite, tmp_path: Path):
    name = serve(suite, tmp_path)
    suite.downloader.stop()
    job = await suite.install_and_wait(heuristic_source=suite.remote.url(f"/files/{name}"))
    assert (job.status, job.error_type) == (pb.INSTALL_STATUS_ERROR, "DOWNLOADER_UNAVAILABLE")
    assert "downloader" in job.error
    request = pb.DownloadAndCacheRequest(source=suite.remote.url(f"/files/{name}"))
    with pytest.raises(errors.UnavailableError) as caught:
        await suite.call(suite.install, "DownloadAndCache", request)
    assert caught.value.reason == "DOWNLOADER_UNAVAILABLE"
    assert await suite.models() == []
    assert suite.files() == []
    assert suite.staging() == []


@pytest.mark.parametrize("suite_settings", [{"downloader_reconnect_s": "1"}])
async def test_a_downloader_killed_mid_download_fails_the_install_cleanly(
    suite: Suite, tmp_path: Path
):
    name = serve(suite, tmp_path)
    job = await suite.create(heuristic_source=suite.remote.url(f"/slow/{name}?delay=0.05"))
    await downloading(suite, job.id)
    suite.kill(suite.downloader)
    failed = await suite.wait(job.id)
    assert (failed.status, failed.error_type) == (
        pb.INSTALL_STATUS_ERROR,
        "DOWNLOADER_UNAVAILABLE",
    )
    assert await suite.models() == []
    assert suite.files() == []  # the partial file went with the staging folder
    assert suite.staging() == []


async def test_a_downloader_restarted_mid_download_lets_the_install_finish(
    suite: Suite, tmp_path: Path
):
    name = serve(suite, tmp_path)
    job = await suite.create(heuristic_source=suite.remote.url(f"/slow/{name}?delay=0.05"))
    await downloading(suite, job.id)
    await suite.restart_downloader()
    finished = await suite.wait(job.id)
    assert (finished.status, finished.error) == (pb.INSTALL_STATUS_COMPLETED, "")
    [model] = await suite.models()
    assert (suite.models_dir / model.path).read_bytes() == suite.remote.files[name]
    assert suite.staging() == []


async def test_a_download_cancelled_in_the_downloader_cancels_the_install(
    suite: Suite, tmp_path: Path
):
    name = serve(suite, tmp_path)
    job = await suite.create(heuristic_source=suite.remote.url(f"/slow/{name}?delay=0.05"))
    started = await downloading(suite, job.id)
    request = download_pb.CancelDownloadJobRequest(id=started.download_job_ids[0])
    await suite.call(suite.downloads, "CancelDownloadJob", request)
    cancelled = await suite.wait(job.id)
    assert cancelled.status == pb.INSTALL_STATUS_CANCELLED
    assert cancelled.error_type == ""
    assert await suite.models() == []
    assert suite.files() == []
    assert suite.staging() == []


async def test_a_cached_download_cancelled_in_the_downloader_fails_the_call(
    suite: Suite, tmp_path: Path
):
    name = serve(suite, tmp_path)
    request = pb.DownloadAndCacheRequest(source=suite.remote.url(f"/slow/{name}?delay=0.05"))
    call = asyncio.create_task(suite.call(suite.install, "DownloadAndCache", request))

    async def running() -> download_pb.DownloadJob | None:
        listing = download_pb.ListDownloadJobsRequest(
            statuses=[download_pb.DOWNLOAD_JOB_STATUS_RUNNING]
        )
        jobs = (await suite.call(suite.downloads, "ListDownloadJobs", listing)).jobs
        return jobs[0] if jobs and jobs[0].bytes > 0 else None

    download = await until(running)
    cancel = download_pb.CancelDownloadJobRequest(id=download.id)
    await suite.call(suite.downloads, "CancelDownloadJob", cancel)
    with pytest.raises(errors.OperationCancelledError) as caught:
        await call
    assert caught.value.reason == "DOWNLOAD_CANCELLED"
    assert suite.files() == []


async def test_concurrent_calls_for_one_source_share_one_download(suite: Suite, tmp_path: Path):
    name = serve(suite, tmp_path)
    request = pb.DownloadAndCacheRequest(source=suite.remote.url(f"/slow/{name}?delay=0.02"))
    first, second = await asyncio.gather(
        suite.call(suite.install, "DownloadAndCache", request),
        suite.call(suite.install, "DownloadAndCache", request),
    )
    assert first.local_path == second.local_path
    assert Path(first.local_path).read_bytes() == suite.remote.files[name]
    assert first.size_bytes == second.size_bytes == len(suite.remote.files[name])
    assert len(suite.remote.requests_to(f"/slow/{name}")) == 1


async def test_two_installs_of_one_url_at_once_install_it_once(suite: Suite, tmp_path: Path):
    name = serve(suite, tmp_path)
    url = suite.remote.url(f"/slow/{name}?delay=0.02")
    jobs = [await suite.create(heuristic_source=url) for _ in range(2)]
    done = await asyncio.gather(*(suite.wait(job.id) for job in jobs))
    outcomes = sorted((job.status, job.error_type) for job in done)
    assert outcomes == [
        (pb.INSTALL_STATUS_COMPLETED, ""),
        (pb.INSTALL_STATUS_ERROR, "MODEL_FILE_EXISTS"),
    ]
    assert [m.path for m in await suite.models()] == [f"sd-1/main/{name}"]
    assert suite.files() == [f"sd-1/main/{name}"]
    assert suite.staging() == []
