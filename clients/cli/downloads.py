"""`easel downloads`: the downloader's queue of jobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from clients.cli import output
from clients.cli.connection import all_pages, client
from clients.cli.errors import RunFailedError, UsageError
from easel.downloader.v1 import download_service_pb2 as pb

app = typer.Typer(help="Download jobs: list, pause, resume, cancel, watch.")

DownloadStatus = output.choices(pb.DownloadJobStatus)
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Ids = Annotated[list[int] | None, typer.Argument(help="Job ids.", show_default=False)]
All = Annotated[bool, typer.Option("--all", help="Every job it applies to.")]


def _status(job: pb.DownloadJob) -> str:
    return output.label(pb.DownloadJobStatus, job.status)


def _source(job: pb.DownloadJob) -> str:
    return job.source or f"{len(job.parts)} files"


def _show(jobs: list[pb.DownloadJob], *, caption: str | None = None) -> None:
    columns = ["id", "status", "progress", "source", "destination", "error"]
    rows = [
        [
            str(job.id),
            _status(job),
            output.transfer(job.bytes, job.total_bytes),
            _source(job),
            job.destination,
            f"{job.error_type}: {job.error}" if job.error_type else "",
        ]
        for job in jobs
    ]
    output.table(columns, rows, caption=caption)


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    status: Annotated[
        list[DownloadStatus] | None,
        typer.Option(
            help="Only jobs in this status; repeat for several.",
            show_default=False,
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """List the download jobs, by id."""
    statuses = [output.from_label(pb.DownloadJobStatus, name) for name in status or ()]
    request = pb.ListDownloadJobsRequest(statuses=statuses)
    jobs = all_pages(client(ctx).downloads.ListDownloadJobs, request, "jobs")
    if as_json:
        output.print_json(jobs)
    else:
        _show(jobs, caption=output.count(len(jobs), "job"))


def _each(
    ids: list[int] | None, every: bool, one: Callable[[int], Any], all_of: Callable[[], Any]
) -> list[pb.DownloadJob]:
    """The jobs changed by calling `one` per id, or `all_of` once with --all."""
    if bool(ids) == every:
        raise UsageError(
            "give job ids or --all (not both)", hint="`easel downloads list` shows the ids."
        )
    if every:
        return list(all_of().jobs)
    return [one(job_id).job for job_id in ids or ()]


def _report(verb: str, jobs: list[pb.DownloadJob]) -> None:
    if not jobs:
        output.say(f"no job to {verb}")
    for job in jobs:
        output.say(f"job {job.id}: {_status(job)}")


@app.command()
def pause(ctx: typer.Context, ids: Ids = None, every: All = False) -> None:
    """Pause jobs, keeping their partial files; `resume` continues them."""
    downloads = client(ctx).downloads
    jobs = _each(
        ids,
        every,
        lambda job_id: downloads.PauseDownloadJob(pb.PauseDownloadJobRequest(id=job_id)),
        lambda: downloads.PauseAllDownloadJobs(pb.PauseAllDownloadJobsRequest()),
    )
    _report("pause", jobs)


@app.command()
def resume(ctx: typer.Context, ids: Ids = None, every: All = False) -> None:
    """Put paused (or not yet started) jobs back on the queue."""
    downloads = client(ctx).downloads
    jobs = _each(
        ids,
        every,
        lambda job_id: downloads.StartDownloadJob(pb.StartDownloadJobRequest(id=job_id)),
        lambda: downloads.StartAllDownloadJobs(pb.StartAllDownloadJobsRequest()),
    )
    _report("resume", jobs)


@app.command()
def cancel(ctx: typer.Context, ids: Ids = None, every: All = False) -> None:
    """Cancel jobs; their partial files are deleted."""
    downloads = client(ctx).downloads
    jobs = _each(
        ids,
        every,
        lambda job_id: downloads.CancelDownloadJob(pb.CancelDownloadJobRequest(id=job_id)),
        lambda: downloads.CancelAllDownloadJobs(pb.CancelAllDownloadJobsRequest()),
    )
    _report("cancel", jobs)


@app.command()
def watch(ctx: typer.Context, ids: Ids = None, as_json: Json = False) -> None:
    """Follow jobs with progress bars until they end (default: every unfinished job)."""
    downloads = client(ctx).downloads
    if not ids:
        request = pb.ListDownloadJobsRequest(
            statuses=[
                pb.DOWNLOAD_JOB_STATUS_ENQUEUED,
                pb.DOWNLOAD_JOB_STATUS_RUNNING,
                pb.DOWNLOAD_JOB_STATUS_PAUSED,
                pb.DOWNLOAD_JOB_STATUS_IDLE,
            ]
        )
        ids = [job.id for job in all_pages(downloads.ListDownloadJobs, request, "jobs")]
    jobs: dict[int, pb.DownloadJob] = {}
    if ids:
        stream = downloads.WatchDownloads(pb.WatchDownloadsRequest(job_ids=ids))
        try:
            with output.progress_bars() as bars:
                tasks = {job_id: bars.add_task(f"job {job_id}", total=None) for job_id in ids}
                for response in stream:
                    event = response.event
                    task = tasks[event.job_id]
                    if event.HasField("job_changed"):
                        job = jobs[event.job_id] = event.job_changed.job
                        bars.update(
                            task,
                            description=f"job {job.id} {_status(job)} {_source(job)}",
                            completed=job.bytes,
                            total=job.total_bytes or None,
                        )
                    else:
                        done, total = event.progress.bytes, event.progress.total_bytes
                        bars.update(task, completed=done, total=total or None)
        finally:
            stream.cancel()
    ended = [jobs[job_id] for job_id in ids or ()]
    if as_json:
        output.print_json(ended)
    elif ended:
        _show(ended)
    else:
        output.say("no unfinished jobs")
    failed = [job for job in ended if job.status == pb.DOWNLOAD_JOB_STATUS_ERROR]
    if failed:
        raise RunFailedError(f"{len(failed)} of {len(ended)} jobs failed")
