"""Install jobs survive a restart of the model manager, kill -9 included: a download is
taken up again and finishes, a half-done placing is undone, ids are never reused, and
access tokens are never written to disk."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from easel.downloader.v1 import download_service_pb2 as download_pb
from easel.model_manager.v1 import model_install_service_pb2 as pb
from services.common.model_taxonomy import ModelRepoVariant
from services.model_manager.install.install_jobs import InstallJob, InstallStatus
from services.model_manager.install.job_store import InstallJobStore
from services.model_manager.install.model_sources import HuggingFaceModelSource, UrlModelSource
from services.model_manager.records.configs import parse_config
from tests.model_fixtures import ModelZoo, write_sparse_checkpoint
from tests.model_manager.install_suite import Suite, until

SECRET = "hf_never_on_disk"


def serve_slowly(suite: Suite, tmp_path: Path, name: str = "big.safetensors") -> str:
    """A 4 MiB sd-1 checkpoint the remote host sends in 64 KiB steps (about 3 s)."""
    model = write_sparse_checkpoint(tmp_path / name, 4 * 1024 * 1024)
    suite.remote.files[name] = model.read_bytes()
    return suite.remote.url(f"/slow/{name}?delay=0.05")


async def downloading(suite: Suite, job_id: int) -> pb.InstallJob:
    """The job, once its download job exists and bytes have arrived."""

    async def started() -> pb.InstallJob | None:
        job = await suite.job(job_id)
        return job if job.download_job_ids and job.bytes > 0 else None

    return await until(started)


@pytest.mark.parametrize("stop", ["kill -9", "SIGTERM"])
async def test_a_download_is_taken_up_again_after_a_restart(
    suite: Suite, tmp_path: Path, model_zoo: ModelZoo, stop: str
):
    url = serve_slowly(suite, tmp_path)
    job = await suite.create(heuristic_source=url)
    before = await downloading(suite, job.id)
    if stop == "kill -9":
        suite.kill(suite.model_manager)
    else:
        suite.model_manager.stop()
    assert before.total_bytes > before.bytes
    stray = suite.models_dir / ".cache" / "installs" / "999"
    stray.mkdir()
    (stray / "left.safetensors").write_bytes(b"x")
    await suite.restart_model_manager()

    done = await suite.wait(job.id)
    assert done.status == pb.INSTALL_STATUS_COMPLETED, done.error
    assert done.config_out.path == "sd-1/main/big.safetensors"
    assert list(done.download_job_ids) == list(before.download_job_ids)  # the same download
    assert len(suite.remote.requests_to("/slow/big.safetensors")) == 1  # fetched once
    assert [m.key for m in await suite.models()] == [done.config_out.key]
    assert suite.files() == ["sd-1/main/big.safetensors"]  # no staging folder, no stray
    later = await suite.create(heuristic_source=str(suite.source(model_zoo.sd1_lora)))
    assert later.id == job.id + 1


async def test_a_placing_cut_by_kill_9_is_undone_after_the_restart(
    suite: Suite, model_zoo: ModelZoo
):
    source = suite.source(model_zoo.sd1_diffusers)
    padding = source / "padding"
    padding.mkdir()
    for number in range(48):  # 384 MiB: the copy takes a while
        (padding / f"blob-{number:02}.dat").write_bytes(bytes(8 * 1024 * 1024))
    source_files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    destination = suite.models_dir / "sd-1" / "main" / source.name
    job = await suite.create(heuristic_source=str(source))

    async def copying() -> bool:
        placed = [p for p in destination.rglob("*") if p.is_file()]
        running = (await suite.job(job.id)).status == pb.INSTALL_STATUS_RUNNING
        return running and 0 < len(placed) < len(source_files)

    await until(copying)
    suite.kill(suite.model_manager)
    assert destination.exists()  # half placed
    await suite.restart_model_manager()

    undone = await suite.job(job.id)
    assert (undone.status, undone.error_type) == (pb.INSTALL_STATUS_ERROR, "INSTALL_INTERRUPTED")
    assert undone.HasField("end_time")
    assert not destination.exists()
    assert suite.files() == []
    assert await suite.models() == []
    assert sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file()) == source_files
    later = await suite.install_and_wait(heuristic_source=str(suite.source(model_zoo.sd1_lora)))
    assert later.id == job.id + 1
    assert later.status == pb.INSTALL_STATUS_COMPLETED, later.error


async def test_a_job_that_needs_its_token_again_must_be_created_again(suite: Suite, tmp_path: Path):
    url = serve_slowly(suite, tmp_path)
    job = await suite.create(url=pb.UrlModelSource(url=url, access_token=SECRET))
    before = await downloading(suite, job.id)
    suite.kill(suite.model_manager)
    # The download finishes meanwhile and is pruned: it must be created anew.
    download_id = before.download_job_ids[0]
    waited = download_pb.WaitDownloadJobRequest(id=download_id)
    assert (await suite.call(suite.downloads, "WaitDownloadJob", waited)).job.status == (
        download_pb.DOWNLOAD_JOB_STATUS_COMPLETED
    )
    await suite.call(suite.downloads, "PruneDownloadJobs", download_pb.PruneDownloadJobsRequest())
    await suite.restart_model_manager()

    failed = await suite.wait(job.id)
    assert (failed.status, failed.error_type) == (pb.INSTALL_STATUS_ERROR, "TOKEN_REQUIRED")
    assert failed.source.url.has_access_token
    assert suite.files() == []
    assert await suite.models() == []
    databases = sorted((suite.root / "databases").glob("installs.db*"))  # with its WAL
    assert suite.root / "databases" / "installs.db" in databases
    for database in databases:
        assert SECRET.encode() not in database.read_bytes()
    again = await suite.install_and_wait(url=pb.UrlModelSource(url=url, access_token=SECRET))
    assert again.status == pb.INSTALL_STATUS_COMPLETED, again.error
    assert again.id == job.id + 1


async def test_a_download_with_a_token_cut_by_restarting_both_services_needs_it_again(
    suite: Suite, tmp_path: Path
):
    url = serve_slowly(suite, tmp_path)
    job = await suite.create(url=pb.UrlModelSource(url=url, access_token=SECRET))
    await downloading(suite, job.id)
    suite.kill(suite.model_manager)
    suite.kill(suite.downloader)
    for database in (suite.root / "databases").glob("*.db*"):  # WALs included
        assert SECRET.encode() not in database.read_bytes()
    await suite.start("downloader")  # ends its download: the token is gone
    await suite.restart_model_manager()

    failed = await suite.wait(job.id)
    assert (failed.status, failed.error_type) == (pb.INSTALL_STATUS_ERROR, "TOKEN_REQUIRED")
    assert "access token" in failed.error
    assert suite.files() == []
    assert len(suite.remote.requests_to("/slow/")) == 1  # never fetched again without it
    again = await suite.install_and_wait(url=pb.UrlModelSource(url=url, access_token=SECRET))
    assert again.status == pb.INSTALL_STATUS_COMPLETED, again.error


async def test_the_store_never_reuses_ids_and_never_writes_tokens(
    database_url: str, tmp_path: Path
):
    path = tmp_path / "installs.db"
    store = await InstallJobStore.open(database_url, path)
    source = UrlModelSource(url="https://example.com/a.safetensors", access_token=SecretStr(SECRET))
    ids = [await store.allocate_id(), await store.allocate_id()]
    for job_id in ids:
        await store.save(InstallJob(id=job_id, source=source, status=InstallStatus.ERROR))
    await store.delete(ids)
    await store.close()

    store = await InstallJobStore.open(database_url, path)
    assert await store.load_all() == []
    job = InstallJob(id=await store.allocate_id(), source=source)
    assert job.id == 3
    await store.save(job)
    await store.close()
    assert "example.com/a.safetensors" in str(stored_rows(database_url, path))
    assert SECRET not in str(stored_rows(database_url, path))

    store = await InstallJobStore.open(database_url, path)
    [loaded] = await store.load_all()
    assert loaded.id == 3
    assert loaded.source.access_token is not None  # it had one ...
    assert loaded.source.access_token.get_secret_value() == ""  # ... which was not kept

    config = {"name": "x", "base": "sd-1", "type": "lora", "format": "lycoris", "path": "x.st"}
    done = InstallJob(
        id=await store.allocate_id(),
        source=HuggingFaceModelSource(repo_id="org/x", variant=ModelRepoVariant.FP16),
        status=InstallStatus.COMPLETED,
        config_out=parse_config(config),
        repo_metadata={"tags": ["lora"], "source_api_response": "{}"},
        end_time=datetime.now(UTC),
    )
    await store.save(done)
    assert (await store.load_all())[1] == done
    await store.close()


def stored_rows(database_url: str, path: Path) -> list[tuple[str]]:
    if database_url == "sqlite:":
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT job FROM install_jobs").fetchall()
        db.close()
        return rows
    with psycopg.connect(database_url) as pg:
        return pg.execute("SELECT job FROM install_jobs").fetchall()
