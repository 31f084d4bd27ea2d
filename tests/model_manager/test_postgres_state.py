"""The model manager and the downloader keeping their state in PostgreSQL
(`EASEL_DATABASE_URL=postgresql://…`): an install over the wire survives a restart of both,
nothing is written to the SQLite files, and a second process on the same job tables is
refused rather than taking up the first one's jobs."""

from __future__ import annotations

import asyncio

import pytest

from easel.downloader.v1 import download_service_pb2 as download_pb
from easel.model_manager.v1 import model_install_service_pb2 as pb
from easel.model_manager.v1 import model_record_service_pb2 as records_pb
from tests.model_fixtures import ModelZoo, write_sparse_checkpoint
from tests.model_manager.install_suite import Suite
from tests.processes import start_service


@pytest.fixture
def suite_settings(postgres_url: str) -> dict[str, str]:
    return {"database_url": postgres_url}


async def test_an_install_survives_a_restart_of_both_services(
    suite: Suite, model_zoo: ModelZoo, tmp_path
):
    model = write_sparse_checkpoint(tmp_path / "remote.safetensors", 256 * 1024)
    suite.remote.files["remote.safetensors"] = model.read_bytes()
    downloaded = await suite.install_and_wait(
        heuristic_source=suite.remote.url("/files/remote.safetensors")
    )
    assert downloaded.status == pb.INSTALL_STATUS_COMPLETED, downloaded.error
    [download_id] = downloaded.download_job_ids
    local = await suite.install_and_wait(heuristic_source=str(suite.source(model_zoo.sd1_lora)))
    assert local.status == pb.INSTALL_STATUS_COMPLETED, local.error

    suite.model_manager.stop()
    suite.downloader.stop()
    await suite.start("downloader")
    await suite.restart_model_manager()

    assert (await suite.job(downloaded.id)).config_out.key == downloaded.config_out.key
    assert (await suite.job(local.id)).status == pb.INSTALL_STATUS_COMPLETED
    models = {model.key: model.path for model in await suite.models()}
    assert models == {
        downloaded.config_out.key: "sd-1/main/remote.safetensors",
        local.config_out.key: local.config_out.path,
    }
    request = download_pb.GetDownloadJobRequest(id=download_id)
    download = (await suite.call(suite.downloads, "GetDownloadJob", request)).job
    assert download.status == download_pb.DOWNLOAD_JOB_STATUS_COMPLETED
    again = await suite.create(heuristic_source=str(suite.source(model_zoo.sd1_loha)))
    assert again.id == local.id + 1  # ids go on from the database's sequence
    assert not (suite.root / "databases").exists()  # no SQLite file was made
    info = await suite.call(suite.records, "GetStoreInfo", records_pb.GetStoreInfoRequest())
    assert (info.backend, info.model_count) == (records_pb.STORE_BACKEND_POSTGRESQL, 2)
    assert info.location.startswith("postgresql://")


async def test_a_second_downloader_or_model_manager_on_the_database_is_refused(suite: Suite):
    for name in ("downloader", "model_manager"):
        env = {**suite.env, f"EASEL_{name.upper()}_ADDRESS": "127.0.0.1:0"}
        second = await asyncio.to_thread(start_service, name, env, suite.log_dir)
        assert await asyncio.to_thread(second.process.wait, 60) == 1
        lines = second.log().splitlines()
        assert [line for line in lines if "JOB_STORE_IN_USE" in line] == lines[-1:]
        assert "Traceback" not in second.log()
    assert suite.downloader.process.poll() is None
    assert suite.model_manager.process.poll() is None
    assert await suite.models() == []  # the first model manager still answers
