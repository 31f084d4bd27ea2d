"""Downloading from a real HTTP server through a real downloader process."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from easel.downloader.v1 import download_service_pb2 as pb
from services.common import errors
from tests.remote_host import TOKEN

S = pb  # status names read better as S.DOWNLOAD_JOB_STATUS_…


async def test_a_file_downloads_with_its_fields(remote, downloads):
    content = remote.add("model.safetensors", 3 * 1024 * 1024 + 17)
    dest = downloads.root / "incoming"
    job = await downloads.create(
        single_source=remote.url("/files/model.safetensors"), dest_dir=str(dest), priority=3
    )
    assert job.id >= 1
    assert job.kind == pb.DOWNLOAD_JOB_KIND_URL
    assert job.priority == 3
    done = await downloads.wait(job.id)
    assert done.status == S.DOWNLOAD_JOB_STATUS_COMPLETED
    assert (dest / "model.safetensors").read_bytes() == content
    assert done.destination == str(dest / "model.safetensors")
    assert (done.bytes, done.total_bytes) == (len(content), len(content))
    assert done.job_sequence >= 1
    assert done.start_time.ToDatetime() <= done.end_time.ToDatetime()
    assert done.etag
    assert done.last_modified
    assert downloads.files(dest) == ["model.safetensors"]


async def test_filename_and_dest_path_choose_the_name(remote, downloads):
    content = remote.add("a.bin", 1000)
    dest = downloads.root / "d"
    by_name = await downloads.create(
        single_source=remote.url("/files/a.bin"), dest_dir=str(dest), filename="b.bin"
    )
    by_path = await downloads.create(
        single_source=remote.url("/files/a.bin"), dest_path=str(dest / "sub" / "c.bin")
    )
    assert (await downloads.wait(by_name.id)).status == S.DOWNLOAD_JOB_STATUS_COMPLETED
    assert (await downloads.wait(by_path.id)).status == S.DOWNLOAD_JOB_STATUS_COMPLETED
    assert (dest / "b.bin").read_bytes() == content
    assert (dest / "sub" / "c.bin").read_bytes() == content


@pytest.mark.parametrize(
    ("served_name", "saved_name"),
    [("lora v2.safetensors", "lora v2.safetensors"), ("../../etc/evil.bin", "evil.bin"),
     (".hidden", "hidden"), ("..", "x.bin")],
)  # fmt: skip
async def test_content_disposition_names_are_sanitised(remote, downloads, served_name, saved_name):
    content = remote.add("x.bin", 500)
    dest = downloads.root / "named"
    url = remote.url(f"/named/x.bin?filename={served_name}")
    job = await downloads.wait((await downloads.create(single_source=url, dest_dir=str(dest))).id)
    assert job.status == S.DOWNLOAD_JOB_STATUS_COMPLETED, job.error
    assert downloads.files(dest) == [saved_name]
    assert (dest / saved_name).read_bytes() == content


async def test_redirects_keep_the_token_on_its_own_host_only(remote, downloads):
    content = remote.add("gated.bin", 2000)
    dest = downloads.root / "r"
    same_host = remote.url("/redirect?to=" + remote.url("/token/gated.bin"))
    job = await downloads.create(
        single_source=same_host, dest_dir=str(dest), filename="gated.bin", access_token=TOKEN
    )
    assert job.has_access_token
    done = await downloads.wait(job.id)
    assert done.status == S.DOWNLOAD_JOB_STATUS_COMPLETED, done.error
    assert (dest / "gated.bin").read_bytes() == content
    assert remote.requests_to("/token/")[-1].authorization == f"Bearer {TOKEN}"

    other_host = remote.url("/redirect?to=") + f"http://localhost:{remote.port}/token/gated.bin"
    job = await downloads.create(
        single_source=other_host, dest_dir=str(dest), filename="2.bin", access_token=TOKEN
    )
    failed = await downloads.wait(job.id)
    assert failed.status == S.DOWNLOAD_JOB_STATUS_ERROR
    assert failed.error_type == "HTTP_403"
    assert remote.requests_to("/token/")[-1].authorization is None
    assert TOKEN not in downloads.service.log()
    assert not (dest / "2.bin").exists()


async def test_pause_keeps_the_partial_file_and_resume_continues_it(remote, downloads):
    content = remote.add("big.bin", 4 * 1024 * 1024)
    dest = downloads.root / "p"
    job = await downloads.create(
        single_source=remote.url("/slow/big.bin?delay=0.02"), dest_dir=str(dest)
    )
    await downloads.until(job.id, lambda j: j.bytes > 512 * 1024)
    paused = await downloads.pause(job.id)
    assert paused.status == S.DOWNLOAD_JOB_STATUS_PAUSED
    partial = dest / f"big.bin.{job.id}.part"
    kept = partial.stat().st_size
    assert 0 < kept < len(content)
    await asyncio.sleep(0.2)
    assert partial.stat().st_size == kept  # nothing moves while paused

    await downloads.start(job.id)
    done = await downloads.wait(job.id)
    assert done.status == S.DOWNLOAD_JOB_STATUS_COMPLETED
    assert (dest / "big.bin").read_bytes() == content
    resumed = remote.requests_to("/slow/")[-1]
    assert resumed.range == f"bytes={kept}-"
    assert resumed.if_range == done.etag
    assert resumed.status == 206
    assert downloads.files(dest) == ["big.bin"]


async def test_resume_starts_over_when_the_server_ignores_ranges(remote, downloads):
    content = remote.add("n.bin", 2 * 1024 * 1024)
    dest = downloads.root / "n"
    job = await downloads.create(
        single_source=remote.url("/slow/n.bin?delay=0.02"), dest_dir=str(dest)
    )
    await downloads.until(job.id, lambda j: j.bytes > 256 * 1024)
    await downloads.pause(job.id)
    remote.files["n.bin"] = changed = content[::-1]  # the file changed on the server meanwhile
    await downloads.start(job.id)
    done = await downloads.wait(job.id)
    assert done.status == S.DOWNLOAD_JOB_STATUS_COMPLETED
    assert (dest / "n.bin").read_bytes() == changed
    assert remote.requests_to("/slow/")[-1].status == 200  # If-Range did not match


async def test_a_server_without_range_support_gets_a_fresh_download(remote, downloads):
    content = remote.add("plain.bin", 1024 * 1024)
    dest = downloads.root / "plain"
    job = await downloads.create(
        single_source=remote.url("/norange/plain.bin"), dest_dir=str(dest), start_later=True
    )
    partial = dest / f"plain.bin.{job.id}.part"
    dest.mkdir()
    partial.write_bytes(b"stale bytes from an earlier attempt")
    await downloads.start(job.id)
    done = await downloads.wait(job.id)
    assert done.status == S.DOWNLOAD_JOB_STATUS_COMPLETED
    assert (dest / "plain.bin").read_bytes() == content


@pytest.mark.parametrize("preserve", [False, True])
async def test_cancel_mid_file(remote, downloads, preserve):
    remote.add("c.bin", 4 * 1024 * 1024)
    dest = downloads.root / "c"
    job = await downloads.create(
        single_source=remote.url("/slow/c.bin?delay=0.02"),
        dest_dir=str(dest),
        preserve_partial_downloads=preserve,
    )
    await downloads.until(job.id, lambda j: j.bytes > 256 * 1024)
    cancelled = await downloads.cancel(job.id)
    assert cancelled.status == S.DOWNLOAD_JOB_STATUS_CANCELLED
    assert cancelled.end_time.seconds > 0
    assert downloads.files(dest) == ([f"c.bin.{job.id}.part"] if preserve else [])
    assert (await downloads.cancel(job.id)).status == S.DOWNLOAD_JOB_STATUS_CANCELLED


async def test_watch_reports_states_and_progress_about_every_percent(remote, downloads):
    remote.add("w.bin", 8 * 1024 * 1024)
    job = await downloads.create(
        single_source=remote.url("/slow/w.bin?delay=0.002"),
        dest_dir=str(downloads.root / "w"),
        start_later=True,
    )
    events = await downloads.watch([job.id], then=lambda: downloads.start(job.id))
    states = [e.job_changed.job.status for e in events if e.HasField("job_changed")]
    assert states[0] == S.DOWNLOAD_JOB_STATUS_IDLE  # the snapshot comes first
    assert states[-1] == S.DOWNLOAD_JOB_STATUS_COMPLETED
    assert S.DOWNLOAD_JOB_STATUS_RUNNING in states
    progress = [e.progress for e in events if e.HasField("progress")]
    assert 50 <= len(progress) <= 140  # about one per 1% of the file
    assert [p.bytes for p in progress] == sorted(p.bytes for p in progress)
    assert all(p.total_bytes == 8 * 1024 * 1024 for p in progress)
    assert all(e.job_id == job.id and e.time.seconds > 0 for e in events)


async def test_progress_comes_every_second_when_the_size_is_unknown(remote, downloads):
    content = remote.add("u.bin", 40 * 64 * 1024)
    job = await downloads.create(
        single_source=remote.url("/nolength/u.bin?delay=0.07"), dest_dir=str(downloads.root / "u")
    )
    events = await downloads.watch([job.id])
    progress = [e.progress for e in events if e.HasField("progress")]
    assert 2 <= len(progress) <= 6  # a ~3 s transfer: one a second, not one a chunk
    done = await downloads.get(job.id)
    assert done.total_bytes == len(content)


async def test_lower_priority_runs_first_when_slots_are_scarce(remote, start_downloader):
    downloads = await start_downloader(max_parallel_downloads=1)
    remote.add("block.bin", 1024 * 1024)
    remote.add("q.bin", 1000)
    dest = downloads.root / "q"
    blocker = await downloads.create(
        single_source=remote.url("/slow/block.bin?delay=0.02"), dest_dir=str(dest)
    )
    await downloads.until(blocker.id, lambda j: j.status == S.DOWNLOAD_JOB_STATUS_RUNNING)
    queued = {}
    for priority in (30, 20, 10, 20):
        job = await downloads.create(
            single_source=remote.url("/files/q.bin"),
            dest_dir=str(dest),
            filename=f"{priority}-{len(queued)}.bin",
            priority=priority,
        )
        assert job.status == S.DOWNLOAD_JOB_STATUS_ENQUEUED
        queued[job.id] = priority
    done = [await downloads.wait(job_id) for job_id in queued]
    order = [job.id for job in sorted(done, key=lambda job: job.job_sequence)]
    assert [queued[job_id] for job_id in order] == [10, 20, 20, 30]
    assert order[1] < order[2]  # equal priorities: by id


async def test_a_multi_file_job_downloads_all_its_files(remote, downloads):
    names = [f"part{i}.bin" for i in range(6)]
    contents = {name: remote.add(name, 300_000 + i) for i, name in enumerate(names)}
    dest = downloads.root / "repo"
    files = [
        pb.MultiFileSourceFile(url=remote.url(f"/slow/{name}?delay=0.01"), path=f"sub/{name}")
        for name in names
    ]
    job = await downloads.create(multi_file=pb.MultiFileSource(files=files), dest_dir=str(dest))
    assert job.kind == pb.DOWNLOAD_JOB_KIND_MULTI_FILE
    assert len(job.parts) == 6
    done = await downloads.wait(job.id)
    assert done.status == S.DOWNLOAD_JOB_STATUS_COMPLETED
    assert done.total_bytes == sum(len(c) for c in contents.values())
    assert all(part.status == S.DOWNLOAD_JOB_STATUS_COMPLETED for part in done.parts)
    for name, content in contents.items():
        assert (dest / "sub" / name).read_bytes() == content
    assert downloads.files(dest) == sorted(f"sub/{name}" for name in names)


async def test_a_multi_file_job_fails_whole_when_one_file_fails(remote, downloads):
    remote.add("good.bin", 2 * 1024 * 1024)
    dest = downloads.root / "repo"
    files = [
        pb.MultiFileSourceFile(url=remote.url("/slow/good.bin?delay=0.01"), path="good.bin"),
        pb.MultiFileSourceFile(url=remote.url("/files/missing.bin"), path="missing.bin"),
    ]
    job = await downloads.create(multi_file=pb.MultiFileSource(files=files), dest_dir=str(dest))
    failed = await downloads.wait(job.id)
    assert failed.status == S.DOWNLOAD_JOB_STATUS_ERROR
    assert failed.error_type == "HTTP_404"
    assert "missing.bin" in failed.error
    statuses = [part.status for part in failed.parts]
    assert statuses == [S.DOWNLOAD_JOB_STATUS_CANCELLED, S.DOWNLOAD_JOB_STATUS_ERROR]
    assert downloads.files(dest) == []


async def test_a_restarted_downloader_resumes_unfinished_jobs(remote, start_downloader, easel_env):
    content = remote.add("long.bin", 3 * 1024 * 1024)
    downloads = await start_downloader()
    dest = downloads.root / "restart"
    job = await downloads.create(
        single_source=remote.url("/slow/long.bin?delay=0.02"), dest_dir=str(dest)
    )
    await downloads.until(job.id, lambda j: j.bytes > 512 * 1024)
    assert downloads.service.stop() == 0
    kept = (dest / f"long.bin.{job.id}.part").stat().st_size
    assert kept > 0

    restarted = await start_downloader()
    listed = await restarted.call("ListDownloadJobs", pb.ListDownloadJobsRequest())
    assert [j.id for j in listed.jobs] == [job.id]
    done = await restarted.wait(job.id)
    assert done.status == S.DOWNLOAD_JOB_STATUS_COMPLETED
    assert (dest / "long.bin").read_bytes() == content
    assert remote.requests_to("/slow/")[-1].range == f"bytes={kept}-"
    second = await restarted.create(single_source=remote.url("/slow/long.bin"), dest_dir=str(dest))
    assert second.id == job.id + 1  # ids are never reused


async def test_a_restart_ends_unfinished_jobs_given_a_token_which_is_never_stored(
    remote, start_downloader
):
    content = remote.add("gated.bin", 3 * 1024 * 1024)
    downloads = await start_downloader()
    dest = downloads.root / "gated"
    url = remote.url("/slow/gated.bin?delay=0.02")
    running = await downloads.create(single_source=url, dest_dir=str(dest), access_token=TOKEN)
    idle = await downloads.create(
        single_source=url, dest_path=str(dest / "later.bin"), access_token=TOKEN, start_later=True
    )
    await downloads.until(running.id, lambda j: j.bytes > 0)
    assert remote.requests_to("/slow/")[-1].authorization == f"Bearer {TOKEN}"
    downloads.service.process.kill()  # abruptly: the WAL keeps every write made
    downloads.service.process.wait()
    databases = sorted((downloads.root / "databases").glob("downloads.db*"))
    assert downloads.root / "databases" / "downloads.db-wal" in databases
    for database in databases:
        assert TOKEN.encode() not in database.read_bytes()
    assert (dest / f"gated.bin.{running.id}.part").exists()
    requests_made = len(remote.requests)

    restarted = await start_downloader()
    for job_id in (running.id, idle.id):
        ended = await restarted.get(job_id)
        assert (ended.status, ended.error_type) == (S.DOWNLOAD_JOB_STATUS_ERROR, "TOKEN_REQUIRED")
        assert "access token" in ended.error
        assert ended.has_access_token
        assert ended.HasField("end_time")
    assert restarted.files(dest) == []  # the partial file is removed, as for other errors
    assert len(remote.requests) == requests_made  # nothing was fetched without the token
    for database in (downloads.root / "databases").glob("downloads.db*"):
        assert TOKEN.encode() not in database.read_bytes()

    again = await restarted.create(single_source=url, dest_dir=str(dest), access_token=TOKEN)
    assert again.id == idle.id + 1  # ids are never reused
    done = await restarted.wait(again.id)
    assert done.status == S.DOWNLOAD_JOB_STATUS_COMPLETED, done.error
    assert (dest / "gated.bin").read_bytes() == content


async def test_local_files_and_folders_are_copied_or_moved(downloads):
    source = downloads.root / "src"
    (source / "folder" / "inner").mkdir(parents=True)
    (source / "folder" / "a.txt").write_text("a")
    (source / "folder" / "inner" / "b.txt").write_text("b" * 10_000)
    (source / "file.bin").write_bytes(b"f" * 5000)
    dest = downloads.root / "dest"

    copy = await downloads.create(single_source=str(source / "folder"), dest_dir=str(dest))
    assert copy.kind == pb.DOWNLOAD_JOB_KIND_LOCAL_PATH
    done = await downloads.wait(copy.id)
    assert done.status == S.DOWNLOAD_JOB_STATUS_COMPLETED
    assert done.total_bytes == 10_001
    assert (dest / "folder" / "inner" / "b.txt").read_text() == "b" * 10_000
    assert (source / "folder" / "a.txt").exists()

    move = await downloads.create(
        single_source=str(source / "file.bin"), dest_path=str(dest / "moved.bin"), move=True
    )
    assert (await downloads.wait(move.id)).status == S.DOWNLOAD_JOB_STATUS_COMPLETED
    assert (dest / "moved.bin").read_bytes() == b"f" * 5000
    assert not (source / "file.bin").exists()


async def test_list_filters_by_status_and_pages(remote, downloads):
    remote.add("l.bin", 100)
    dest = str(downloads.root / "l")
    ids = []
    for i in range(5):
        job = await downloads.create(
            single_source=remote.url("/files/l.bin"),
            dest_dir=dest,
            filename=f"{i}",
            start_later=True,
        )
        ids.append(job.id)
    await downloads.start(ids[0])
    await downloads.wait(ids[0])
    idle = await downloads.call(
        "ListDownloadJobs",
        pb.ListDownloadJobsRequest(statuses=[S.DOWNLOAD_JOB_STATUS_IDLE], page_size=3),
    )
    assert [j.id for j in idle.jobs] == ids[1:4]
    rest = await downloads.call(
        "ListDownloadJobs",
        pb.ListDownloadJobsRequest(
            statuses=[S.DOWNLOAD_JOB_STATUS_IDLE], page_size=3, page_token=idle.next_page_token
        ),
    )
    assert [j.id for j in rest.jobs] == ids[4:]
    assert rest.next_page_token == ""

    pruned = await downloads.call("PruneDownloadJobs", pb.PruneDownloadJobsRequest())
    assert list(pruned.pruned_job_ids) == [ids[0]]
    cancelled = await downloads.call("CancelAllDownloadJobs", pb.CancelAllDownloadJobsRequest())
    assert [j.id for j in cancelled.jobs] == ids[1:]
    assert all(j.status == S.DOWNLOAD_JOB_STATUS_CANCELLED for j in cancelled.jobs)


async def test_wait_all_joins_every_active_job(remote, downloads):
    remote.add("j.bin", 512 * 1024)
    dest = str(downloads.root / "j")
    ids = [
        (
            await downloads.create(
                single_source=remote.url("/slow/j.bin?delay=0.01"), dest_dir=dest, filename=f"{i}"
            )
        ).id
        for i in range(3)
    ]
    joined = await downloads.call("WaitAllDownloadJobs", pb.WaitAllDownloadJobsRequest())
    assert sorted(j.id for j in joined.jobs) == ids
    assert all(j.status == S.DOWNLOAD_JOB_STATUS_COMPLETED for j in joined.jobs)


async def test_watching_all_jobs_starts_with_the_unfinished_ones(remote, downloads):
    remote.add("a.bin", 1000)
    dest = str(downloads.root / "all")
    finished = await downloads.create(single_source=remote.url("/files/a.bin"), dest_dir=dest)
    await downloads.wait(finished.id)
    idle = await downloads.create(
        single_source=remote.url("/files/a.bin"), dest_dir=dest, filename="b", start_later=True
    )
    stream = downloads.stub.WatchDownloads(pb.WatchDownloadsRequest(), timeout=30)
    snapshot = await anext(stream.__aiter__())
    assert snapshot.event.job_changed.job.id == idle.id  # the finished job is not repeated
    later = await downloads.create(
        single_source=remote.url("/files/a.bin"), dest_dir=dest, filename="c"
    )
    seen: list[int] = []
    async for response in stream:
        event = response.event
        if event.HasField("job_changed") and event.job_changed.job.id == later.id:
            seen.append(event.job_changed.job.status)
            if event.job_changed.job.status == S.DOWNLOAD_JOB_STATUS_COMPLETED:
                break
    assert seen[0] == S.DOWNLOAD_JOB_STATUS_ENQUEUED
    stream.cancel()


async def test_a_watch_ends_unavailable_when_the_downloader_stops(remote, downloads):
    remote.add("s.bin", 4 * 1024 * 1024)
    job = await downloads.create(
        single_source=remote.url("/slow/s.bin?delay=0.05"), dest_dir=str(downloads.root / "s")
    )
    stream = downloads.stub.WatchDownloads(pb.WatchDownloadsRequest(job_ids=[job.id]))
    await anext(stream.__aiter__())
    downloads.service.process.terminate()
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        async for _ in stream:
            pass
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert downloads.service.process.wait(10) == 0


async def test_max_parallel_downloads_holds_at_all_times(remote, start_downloader):
    downloads = await start_downloader(max_parallel_downloads=2)
    remote.add("m.bin", 1024 * 1024)
    dest = str(downloads.root / "m")
    ids = [
        (
            await downloads.create(
                single_source=remote.url("/slow/m.bin?delay=0.01"), dest_dir=dest, filename=f"{i}"
            )
        ).id
        for i in range(5)
    ]
    peak = 0
    while True:
        listed = await downloads.call("ListDownloadJobs", pb.ListDownloadJobsRequest())
        running = sum(job.status == S.DOWNLOAD_JOB_STATUS_RUNNING for job in listed.jobs)
        assert running <= 2
        peak = max(peak, running)
        if all(job.status == S.DOWNLOAD_JOB_STATUS_COMPLETED for job in listed.jobs):
            break
        await asyncio.sleep(0.01)
    assert peak == 2
    assert len(ids) == 5


async def test_a_restart_keeps_the_finished_files_of_a_multi_file_job(remote, start_downloader):
    remote.add("fast.bin", 100_000)
    slow = remote.add("slow.bin", 3 * 1024 * 1024)
    downloads = await start_downloader()
    dest = downloads.root / "multi"
    files = [
        pb.MultiFileSourceFile(url=remote.url("/files/fast.bin"), path="fast.bin"),
        pb.MultiFileSourceFile(url=remote.url("/slow/slow.bin?delay=0.02"), path="slow.bin"),
    ]
    job = await downloads.create(multi_file=pb.MultiFileSource(files=files), dest_dir=str(dest))
    await downloads.until(
        job.id,
        lambda j: j.parts[0].status == S.DOWNLOAD_JOB_STATUS_COMPLETED and j.parts[1].bytes > 0,
    )
    assert downloads.service.stop() == 0

    restarted = await start_downloader()
    done = await restarted.wait(job.id)
    assert done.status == S.DOWNLOAD_JOB_STATUS_COMPLETED
    assert (dest / "slow.bin").read_bytes() == slow
    assert len(remote.requests_to("/files/fast.bin")) == 1  # not fetched again


async def test_a_416_for_a_complete_partial_file_finishes_the_job(remote, downloads):
    content = remote.add("whole.bin", 4 * 1024 * 1024)
    dest = downloads.root / "whole"
    job = await downloads.create(
        single_source=remote.url("/slow/whole.bin?delay=0.02"), dest_dir=str(dest)
    )
    await downloads.until(job.id, lambda j: j.bytes > 256 * 1024)
    await downloads.pause(job.id)
    # Every byte had arrived, but the job was stopped before the partial file was renamed.
    (dest / f"whole.bin.{job.id}.part").write_bytes(content)
    await downloads.start(job.id)
    done = await downloads.wait(job.id)
    assert done.status == S.DOWNLOAD_JOB_STATUS_COMPLETED, done.error
    assert (done.bytes, done.total_bytes) == (len(content), len(content))
    assert (dest / "whole.bin").read_bytes() == content
    assert downloads.files(dest) == ["whole.bin"]
    last = remote.requests_to("/slow/")[-1]  # nothing was fetched after the 416
    assert (last.range, last.status) == (f"bytes={len(content)}-", 416)


async def test_a_416_for_a_partial_file_longer_than_the_file_starts_over(remote, downloads):
    content = remote.add("long.bin", 4 * 1024 * 1024)
    dest = downloads.root / "long"
    job = await downloads.create(
        single_source=remote.url("/slow/long.bin?delay=0.02"), dest_dir=str(dest)
    )
    await downloads.until(job.id, lambda j: j.bytes > 256 * 1024)
    await downloads.pause(job.id)
    (dest / f"long.bin.{job.id}.part").write_bytes(content + b"a stale tail")
    await downloads.start(job.id)
    done = await downloads.wait(job.id)
    assert done.status == S.DOWNLOAD_JOB_STATUS_COMPLETED, done.error
    assert (dest / "long.bin").read_bytes() == content
    assert [r.status for r in remote.requests_to("/slow/")][-2:] == [416, 200]


@pytest.mark.parametrize("kind", ["url", "multi_file", "local_path"])
async def test_a_destination_that_became_a_file_ends_the_job_in_error(
    remote, start_downloader, kind
):
    remote.add("f.bin", 1000)
    downloads = await start_downloader()
    dest = downloads.root / "later"
    source = downloads.root / "source.bin"
    source.write_bytes(b"local")
    sources = {
        "url": {"single_source": remote.url("/files/f.bin")},
        "multi_file": {
            "multi_file": pb.MultiFileSource(
                files=[pb.MultiFileSourceFile(url=remote.url("/files/f.bin"), path="f.bin")]
            )
        },
        "local_path": {"single_source": str(source)},
    }
    job = await downloads.create(dest_dir=str(dest), start_later=True, **sources[kind])
    dest.write_bytes(b"a file now")
    await downloads.start(job.id)
    failed = await downloads.wait(job.id)
    assert (failed.status, failed.error_type) == (
        S.DOWNLOAD_JOB_STATUS_ERROR,
        "DESTINATION_EXISTS",
    )
    assert str(dest) in failed.error
    with pytest.raises(errors.FailedPreconditionError) as cancelled:
        await downloads.cancel(job.id)
    assert cancelled.value.reason == "DOWNLOAD_JOB_FINISHED"
    assert dest.read_bytes() == b"a file now"
    assert source.read_bytes() == b"local"

    assert downloads.service.stop() == 0
    fetched = len(remote.requests)
    restarted = await start_downloader()
    assert (await restarted.get(job.id)).status == S.DOWNLOAD_JOB_STATUS_ERROR
    assert len(remote.requests) == fetched  # not fetched again


async def test_huggingface_file_pages_are_fetched_as_the_files(downloads):
    dest = str(downloads.root / "hf")
    page = "https://huggingface.co/org/model/blob/main/unet/model.safetensors?download=true"
    job = await downloads.create(single_source=page, dest_dir=dest, start_later=True)
    assert job.source == (
        "https://huggingface.co/org/model/resolve/main/unet/model.safetensors?download=true"
    )
    files = [
        pb.MultiFileSourceFile(url="https://hf.co/datasets/org/data/blob/v1/a.json", path="a"),
        pb.MultiFileSourceFile(url="https://example.com/org/model/blob/main/b", path="b"),
    ]
    multi = await downloads.create(
        multi_file=pb.MultiFileSource(files=files), dest_dir=dest, start_later=True
    )
    assert [part.source for part in multi.parts] == [
        "https://hf.co/datasets/org/data/resolve/v1/a.json",
        "https://example.com/org/model/blob/main/b",  # not the hub: left as it is
    ]
    assert (await downloads.get(job.id)).source == job.source
