"""`easel downloads` against a real downloader: list, pause, resume, cancel and watch, and
the exit codes of what goes wrong."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.sdk import EaselClient
from easel.downloader.v1 import download_service_pb2 as pb
from tests.cli.conftest import Easel
from tests.processes import client_settings, wait_serving


@pytest.fixture
def sdk(run_service, easel_env) -> Iterator[EaselClient]:
    easel_env["EASEL_ALLOWED_NETWORKS"] = json.dumps(["127.0.0.0/8"])
    wait_serving(run_service("downloader"))
    with EaselClient(client_settings(easel_env)) as client:
        yield client


@pytest.fixture
def silent_host() -> Iterator[str]:
    """A URL whose host accepts the connection and never answers: its download stays
    RUNNING until it is paused or cancelled."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"http://127.0.0.1:{server.getsockname()[1]}/model.safetensors"


def status(sdk: EaselClient, job_id: int) -> int:
    return sdk.downloads.GetDownloadJob(pb.GetDownloadJobRequest(id=job_id)).job.status


def test_a_download_is_listed_paused_resumed_and_cancelled(
    sdk: EaselClient, easel: Easel, easel_env, silent_host: str
):
    dest = Path(easel_env["EASEL_ROOT"]) / "incoming"
    request = pb.CreateDownloadJobRequest(single_source=silent_host, dest_dir=str(dest))
    job_id = sdk.downloads.CreateDownloadJob(request).job.id

    [listed] = easel.json("downloads", "list")
    assert (int(listed["id"]), listed["source"]) == (job_id, silent_host)
    assert silent_host in easel.ok("downloads", "list").stdout

    assert f"job {job_id}: paused" in easel.ok("downloads", "pause", str(job_id)).stdout
    assert status(sdk, job_id) == pb.DOWNLOAD_JOB_STATUS_PAUSED
    assert [int(job["id"]) for job in easel.json("downloads", "list", "--status", "paused")] == [
        job_id
    ]

    easel.ok("downloads", "resume", str(job_id))
    assert status(sdk, job_id) in {pb.DOWNLOAD_JOB_STATUS_ENQUEUED, pb.DOWNLOAD_JOB_STATUS_RUNNING}

    assert f"job {job_id}: cancelled" in easel.ok("downloads", "cancel", "--all").stdout
    assert status(sdk, job_id) == pb.DOWNLOAD_JOB_STATUS_CANCELLED
    assert "no job to pause" in easel.ok("downloads", "pause", "--all").stdout

    finished = easel("downloads", "pause", str(job_id))
    assert finished.exit_code == 6
    assert "DOWNLOAD_JOB_FINISHED" in finished.stderr


def test_watch_follows_a_job_to_its_end(sdk: EaselClient, easel: Easel, easel_env):
    root = Path(easel_env["EASEL_ROOT"])
    source = root / "big.bin"
    source.write_bytes(b"\0" * 3_000_000)
    request = pb.CreateDownloadJobRequest(
        single_source=str(source), dest_path=str(root / "copy.bin"), start_later=True
    )
    job_id = sdk.downloads.CreateDownloadJob(request).job.id
    easel.ok("downloads", "resume", str(job_id))

    [ended] = easel.json("downloads", "watch", str(job_id))
    assert ended["status"] == "DOWNLOAD_JOB_STATUS_COMPLETED"
    assert (root / "copy.bin").read_bytes() == source.read_bytes()
    assert "completed" in easel.ok("downloads", "watch", str(job_id)).stdout
    assert "no unfinished jobs" in easel.ok("downloads", "watch").stdout


def test_unknown_jobs_and_bad_usage(sdk: EaselClient, easel: Easel):
    unknown = easel("downloads", "pause", "999")
    assert unknown.exit_code == 3
    assert "DOWNLOAD_JOB_NOT_FOUND" in unknown.stderr
    assert "easel downloads list" in unknown.stderr

    assert easel("downloads", "pause").exit_code == 2  # neither ids nor --all
    assert easel("downloads", "pause", "1", "--all").exit_code == 2
    assert easel("downloads", "list", "--status", "sleeping").exit_code == 2
    invalid = easel("downloads", "resume", "0")  # the service rejects the id
    assert invalid.exit_code == 2
    assert "id" in invalid.stderr
