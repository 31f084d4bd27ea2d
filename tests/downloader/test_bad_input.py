"""Bad input and failing remotes: a clear status or error, and nothing left behind."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from easel.downloader.v1 import download_service_pb2 as pb
from services.common import errors
from tests.processes import free_port

S = pb


async def assert_no_jobs(downloads) -> None:
    listed = await downloads.call("ListDownloadJobs", pb.ListDownloadJobsRequest())
    assert list(listed.jobs) == []


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("file:///etc/passwd", "UNSUPPORTED_SCHEME"),
        ("ftp://example.com/model.bin", "UNSUPPORTED_SCHEME"),
        ("", "INVALID_SOURCE"),
        ("http://", "INVALID_SOURCE"),
        ("http://[::1", "INVALID_SOURCE"),
        ("not a url or a path", "INVALID_SOURCE"),
        ("http://1.2.3.4.5/model.bin", "INVALID_SOURCE"),  # numbers, but no IPv4 address
        ("http://256.0.0.1/model.bin", "INVALID_SOURCE"),
    ],
)
async def test_bad_sources_are_invalid_arguments(downloads, source, reason):
    with pytest.raises(errors.InvalidArgumentError) as caught:
        await downloads.create(single_source=source, dest_dir=str(downloads.root / "x"))
    assert caught.value.reason == reason
    assert caught.value.violations[0].field == "single_source"
    await assert_no_jobs(downloads)
    assert not (downloads.root / "x").exists()


async def test_a_destination_outside_the_allowed_roots_is_refused(remote, downloads, tmp_path):
    remote.add("f.bin", 10)
    outside = tmp_path / "outside"
    for destination in (
        {"dest_dir": str(outside)},
        {"dest_dir": str(downloads.root / ".." / "outside")},
        {"dest_path": "/etc/f.bin"},
    ):
        with pytest.raises(errors.PermissionDeniedError) as caught:
            await downloads.create(single_source=remote.url("/files/f.bin"), **destination)
        assert caught.value.reason == "PATH_NOT_ALLOWED"
    with pytest.raises(errors.InvalidArgumentError) as relative:
        await downloads.create(single_source=remote.url("/files/f.bin"), dest_dir="models")
    assert relative.value.reason == "INVALID_DESTINATION"
    with pytest.raises(errors.PermissionDeniedError):  # a local source must be inside too
        await downloads.create(single_source="/etc/hostname", dest_dir=str(downloads.root / "y"))
    await assert_no_jobs(downloads)
    assert not outside.exists()


async def test_malformed_requests_name_their_field(remote, downloads):
    url = remote.url("/files/f.bin")
    dest = str(downloads.root / "d")
    cases = [
        ({"single_source": url}, "dest_dir"),
        ({"single_source": url, "dest_dir": dest, "filename": "../x"}, "filename"),
        ({"single_source": url, "dest_dir": dest, "move": True}, "move"),
        ({"multi_file": pb.MultiFileSource(), "dest_dir": dest}, "multi_file.files"),
        (
            {
                "multi_file": pb.MultiFileSource(
                    files=[pb.MultiFileSourceFile(url=url, path="../escape.bin")]
                ),
                "dest_dir": dest,
            },
            "multi_file.files[0].path",
        ),
    ]
    for fields, field in cases:
        with pytest.raises(errors.InvalidArgumentError) as caught:
            await downloads.create(**fields)
        assert caught.value.violations[0].field == field
    await assert_no_jobs(downloads)


async def test_a_destination_that_is_a_file_is_refused(remote, downloads):
    remote.add("f.bin", 10)
    url = remote.url("/files/f.bin")
    blocker = downloads.root / "blocker"
    blocker.write_bytes(b"not a folder")
    folder = downloads.root / "folder"
    folder.mkdir()
    (folder / "file").write_bytes(b"x")
    source = downloads.root / "source.bin"
    source.write_bytes(b"s")

    def files(*paths: str) -> pb.MultiFileSource:
        return pb.MultiFileSource(files=[pb.MultiFileSourceFile(url=url, path=p) for p in paths])

    cases = [
        ({"single_source": url, "dest_dir": str(blocker)}, "dest_dir"),
        ({"single_source": url, "dest_dir": str(blocker / "below")}, "dest_dir"),
        ({"single_source": url, "dest_path": str(blocker / "f.bin")}, "dest_path"),
        ({"single_source": str(source), "dest_dir": str(blocker)}, "dest_dir"),
        ({"multi_file": files("x.bin"), "dest_dir": str(blocker)}, "dest_dir"),
        (
            {"multi_file": files("ok.bin", "file/x.bin"), "dest_dir": str(folder)},
            "multi_file.files[1].path",
        ),
    ]
    for fields, field in cases:
        with pytest.raises(errors.InvalidArgumentError) as caught:
            await downloads.create(**fields)
        assert (caught.value.reason, caught.value.violations[0].field) == (
            "INVALID_DESTINATION",
            field,
        )
    await assert_no_jobs(downloads)
    assert blocker.read_bytes() == b"not a folder"
    assert downloads.files(folder) == ["file"]
    assert remote.requests == []


@pytest.mark.parametrize(
    "host", ["127.1", "2130706433", "0x7f.1", "0177.0.0.1", "0x7f000001", "127.0.0.1."]
)
async def test_odd_ipv4_spellings_are_refused_at_create(remote, downloads, host):
    remote.add("f.bin", 10)
    url = f"http://{host}:{remote.port}/files/f.bin"
    # Refused although the fixture allows loopback: only the standard spelling is checked.
    with pytest.raises(errors.PermissionDeniedError) as caught:
        await downloads.create(single_source=url, dest_dir=str(downloads.root))
    assert caught.value.reason == "ADDRESS_NOT_ALLOWED"
    assert caught.value.metadata == {"host": host, "address": "127.0.0.1"}
    multi = pb.MultiFileSource(files=[pb.MultiFileSourceFile(url=url, path="f.bin")])
    with pytest.raises(errors.PermissionDeniedError):
        await downloads.create(multi_file=multi, dest_dir=str(downloads.root))
    await assert_no_jobs(downloads)
    assert remote.requests == []


async def test_unknown_ids_and_finished_jobs(remote, downloads):
    with pytest.raises(errors.NotFoundError) as unknown:
        await downloads.get(999)
    assert (unknown.value.reason, unknown.value.metadata) == (
        "DOWNLOAD_JOB_NOT_FOUND",
        {"job_id": "999"},
    )
    with pytest.raises(errors.NotFoundError):
        await downloads.pause(999)
    with pytest.raises(errors.InvalidArgumentError):
        await downloads.get(0)

    remote.add("f.bin", 10)
    job = await downloads.create(
        single_source=remote.url("/files/f.bin"), dest_dir=str(downloads.root)
    )
    await downloads.wait(job.id)
    for finished_call in (downloads.pause, downloads.start, downloads.cancel):
        with pytest.raises(errors.FailedPreconditionError) as caught:
            await finished_call(job.id)
        assert caught.value.metadata == {"job_id": str(job.id), "status": "completed"}
    assert (await downloads.get(job.id)).status == S.DOWNLOAD_JOB_STATUS_COMPLETED


@pytest.mark.parametrize("code", [403, 404, 500])
async def test_http_errors_end_the_job_with_the_status(remote, downloads, code):
    dest = downloads.root / "e"
    job = await downloads.create(single_source=remote.url(f"/status/{code}"), dest_dir=str(dest))
    failed = await downloads.wait(job.id)
    assert failed.status == S.DOWNLOAD_JOB_STATUS_ERROR
    assert failed.error_type == f"HTTP_{code}"
    assert str(code) in failed.error
    assert not dest.exists() or downloads.files(dest) == []


async def test_an_unreachable_host_is_a_connection_error(downloads):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens once closed
    job = await downloads.create(
        single_source=f"http://127.0.0.1:{port}/model.bin", dest_dir=str(downloads.root / "u")
    )
    failed = await downloads.wait(job.id)
    assert (failed.status, failed.error_type) == (S.DOWNLOAD_JOB_STATUS_ERROR, "CONNECTION_ERROR")


async def test_a_connection_dropped_mid_file_leaves_no_partial(remote, downloads):
    remote.add("d.bin", 1024 * 1024)
    dest = downloads.root / "drop"
    job = await downloads.create(single_source=remote.url("/drop/d.bin"), dest_dir=str(dest))
    failed = await downloads.wait(job.id)
    assert (failed.status, failed.error_type) == (S.DOWNLOAD_JOB_STATUS_ERROR, "CONNECTION_ERROR")
    assert downloads.files(dest) == []


async def test_not_enough_free_space(remote, downloads):
    dest = downloads.root / "huge"
    job = await downloads.create(single_source=remote.url("/huge"), dest_dir=str(dest))
    failed = await downloads.wait(job.id)
    assert (failed.status, failed.error_type) == (S.DOWNLOAD_JOB_STATUS_ERROR, "DISK_FULL")
    assert downloads.files(dest) == []

    files = [pb.MultiFileSourceFile(url=remote.url("/huge"), path="h", size=10 * 1024**4)]
    with pytest.raises(errors.ResourceExhaustedError) as caught:
        await downloads.create(multi_file=pb.MultiFileSource(files=files), dest_dir=str(dest))
    assert caught.value.reason == "DISK_FULL"


@pytest.fixture
def tiny_disk(tmp_path) -> Path:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


async def test_a_disk_that_fills_up_mid_file(remote, start_downloader, tiny_disk):
    remote.add("n.bin", 2 * 1024 * 1024)
    downloads = await start_downloader(download_roots=[str(tiny_disk)])
    # No Content-Length: the space check cannot know, the write runs out of space.
    job = await downloads.create(
        single_source=remote.url("/nolength/n.bin?delay=0"), dest_dir=str(tiny_disk)
    )
    failed = await downloads.wait(job.id)
    assert (failed.status, failed.error_type) == (S.DOWNLOAD_JOB_STATUS_ERROR, "DISK_FULL")
    assert downloads.files(tiny_disk) == []


async def test_private_addresses_are_refused_unless_allowed(remote, start_downloader):
    remote.add("f.bin", 10)
    downloads = await start_downloader(allowed_networks=[])
    with pytest.raises(errors.PermissionDeniedError) as literal:
        await downloads.create(
            single_source=remote.url("/files/f.bin"), dest_dir=str(downloads.root)
        )
    assert literal.value.reason == "ADDRESS_NOT_ALLOWED"

    by_name = await downloads.create(
        single_source=f"http://localhost:{remote.port}/files/f.bin", dest_dir=str(downloads.root)
    )
    failed = await downloads.wait(by_name.id)
    assert (failed.status, failed.error_type) == (
        S.DOWNLOAD_JOB_STATUS_ERROR,
        "ADDRESS_NOT_ALLOWED",
    )
    assert remote.requests == []


async def test_a_redirect_to_a_refused_address_is_refused(remote, start_downloader):
    downloads = await start_downloader(allowed_networks=["127.0.0.1/32"])
    target = f"http://127.0.0.2:{free_port()}/anything"
    job = await downloads.create(
        single_source=remote.url(f"/redirect?to={target}"), dest_dir=str(downloads.root)
    )
    failed = await downloads.wait(job.id)
    assert (failed.status, failed.error_type) == (
        S.DOWNLOAD_JOB_STATUS_ERROR,
        "ADDRESS_NOT_ALLOWED",
    )
    assert [r.path for r in remote.requests] == ["/redirect"]

    odd = remote.url(f"/redirect?to=http://127.1:{remote.port}/status/200")
    job = await downloads.create(single_source=odd, dest_dir=str(downloads.root))
    failed = await downloads.wait(job.id)
    assert (failed.error_type, failed.error) == (
        "ADDRESS_NOT_ALLOWED",
        "127.1 is a non-standard spelling of the IPv4 address 127.0.0.1; write it as 127.0.0.1",
    )
    assert remote.requests_to("/status/") == []

    job = await downloads.create(
        single_source=remote.url("/redirect?to=ftp://example.com/x"), dest_dir=str(downloads.root)
    )
    failed = await downloads.wait(job.id)
    assert failed.error_type == "UNSUPPORTED_SCHEME"


@pytest.mark.parametrize("status", [S.DOWNLOAD_JOB_STATUS_UNSPECIFIED, 99])
async def test_a_status_filter_must_name_real_statuses(downloads, status):
    with pytest.raises(errors.InvalidArgumentError) as caught:
        await downloads.call("ListDownloadJobs", pb.ListDownloadJobsRequest(statuses=[status]))
    assert caught.value.violations[0].field == "statuses"
