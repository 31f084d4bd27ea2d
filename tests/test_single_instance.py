"""One downloader and one model manager per job store, and one invoker per sessions file,
on SQLite (the default): a second process started on the same root is refused at
start-up (JOB_STORE_IN_USE, SESSION_STORE_IN_USE) instead of taking up the first one's
unfinished jobs or failing its running queue item, and a service killed with kill -9
leaves no lock behind, so it starts again on the same root."""

from __future__ import annotations

from pathlib import Path

import pytest

from easel.downloader.v1 import download_service_pb2, download_service_pb2_grpc
from easel.invoker.v1 import session_service_pb2, session_service_pb2_grpc
from easel.model_manager.v1 import model_record_service_pb2, model_record_service_pb2_grpc
from services.common import errors
from services.common.sqlite_jobs import SqliteJobRows
from tests.processes import ServiceProcess, address_key, start_service, wait_serving

REFUSALS = {
    "downloader": ("JOB_STORE_IN_USE", "downloads.db"),
    "model_manager": ("JOB_STORE_IN_USE", "installs.db"),
    "invoker": ("SESSION_STORE_IN_USE", "sessions.db"),
}


def answers(service: ServiceProcess) -> bool:
    """Whether `service` answers a call that reads its stores."""
    with service.sync_channel() as channel:
        if service.name == "downloader":
            downloads = download_service_pb2_grpc.DownloadServiceStub(channel)
            request = download_service_pb2.ListDownloadJobsRequest()
            return list(downloads.ListDownloadJobs(request, timeout=30).jobs) == []
        if service.name == "invoker":
            sessions = session_service_pb2_grpc.SessionServiceStub(channel)
            request = session_service_pb2.ListSessionsRequest()
            return list(sessions.ListSessions(request, timeout=30).sessions) == []
        records = model_record_service_pb2_grpc.ModelRecordServiceStub(channel)
        request = model_record_service_pb2.GetStoreInfoRequest()
        return records.GetStoreInfo(request, timeout=30).model_count == 0


@pytest.mark.parametrize("name", list(REFUSALS))
def test_a_second_service_on_the_same_root_is_refused_and_the_first_serves_on(
    name: str, easel_env: dict[str, str], tmp_path: Path
):
    first = start_service(name, easel_env, tmp_path)
    wait_serving(first)

    # Another port, the same root: only the job store can refuse it.
    second = start_service(name, {**easel_env, address_key(name): "127.0.0.1:0"}, tmp_path)
    with pytest.raises(AssertionError, match="exited early"):
        wait_serving(second)
    assert second.process.wait(timeout=30) == 1
    reason, file = REFUSALS[name]
    lines = second.log().splitlines()
    assert [line for line in lines if reason in line] == lines[-1:]
    assert str(Path(easel_env["EASEL_ROOT"]) / "databases" / file) in lines[-1]
    assert "Traceback" not in second.log()

    assert first.process.poll() is None
    assert answers(first)


@pytest.mark.parametrize("name", list(REFUSALS))
def test_a_service_killed_with_kill_9_starts_again_on_its_root(
    name: str, easel_env: dict[str, str], tmp_path: Path
):
    first = start_service(name, easel_env, tmp_path)
    wait_serving(first)
    first.process.kill()
    first.process.wait()

    again = start_service(name, {**easel_env, address_key(name): "127.0.0.1:0"}, tmp_path)
    wait_serving(again)
    assert answers(again)


async def test_a_job_table_opened_twice_is_refused_until_the_first_closes(tmp_path: Path):
    path = tmp_path / "jobs.db"
    first = SqliteJobRows(path, "download_jobs")
    await first.put(await first.allocate_id(), "first's job")
    with pytest.raises(errors.FailedPreconditionError) as caught:
        SqliteJobRows(path, "download_jobs")
    assert caught.value.reason == "JOB_STORE_IN_USE"
    assert str(path) in caught.value.message
    assert caught.value.metadata == {"table": "download_jobs", "path": str(path)}
    await first.close()

    second = SqliteJobRows(path, "download_jobs")
    assert await second.load_all() == ["first's job"]
    assert await second.allocate_id() == 2
    await second.close()


async def test_another_table_of_the_same_file_is_not_held(tmp_path: Path):
    path = tmp_path / "jobs.db"
    downloads = SqliteJobRows(path, "download_jobs")
    installs = SqliteJobRows(path, "install_jobs")
    await downloads.put(1, "download")
    await installs.put(1, "install")
    assert await downloads.load_all() == ["download"]
    assert await installs.load_all() == ["install"]
    await downloads.close()
    await installs.close()
