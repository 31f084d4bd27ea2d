"""`easel queue`: the invoker's execution queue of session runs."""

from __future__ import annotations

from typing import Annotated

import typer

from clients.cli import output
from clients.cli.connection import all_pages, client
from easel.invoker.v1 import queue_service_pb2 as pb

app = typer.Typer(help="The execution queue: list, cancel, clear, pause, resume.")

ItemStatus = output.choices(pb.QueueItemStatus)
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _state(status: pb.QueueStatus) -> str:
    state = "paused" if status.paused else "running"
    return (
        f"queue {state}: {status.pending_count} pending, {status.running_count} running, "
        f"{status.completed_count} completed, {status.failed_count} failed, "
        f"{status.cancelled_count} cancelled"
    )


@app.command("list")
def list_items(
    ctx: typer.Context,
    status: Annotated[
        list[ItemStatus] | None,
        typer.Option(
            help="Only items in this status; repeat for several.",
            show_default=False,
        ),
    ] = None,
    session: Annotated[str | None, typer.Option(help="Only the runs of this session.")] = None,
    as_json: Json = False,
) -> None:
    """List the queue items in the order they were queued, with the queue's state."""
    queue = client(ctx).queue
    request = pb.ListQueueItemsRequest(
        statuses=[output.from_label(pb.QueueItemStatus, name) for name in status or ()],
        session_id=session or "",
    )
    items = all_pages(queue.ListQueueItems, request, "queue_items")
    if as_json:
        output.print_json(items)
        return
    state = queue.GetQueueStatus(pb.GetQueueStatusRequest()).status
    columns = ["id", "status", "priority", "session", "queued", "ended", "error"]
    rows = [
        [
            str(item.id),
            output.label(pb.QueueItemStatus, item.status),
            str(item.priority),
            item.session_id,
            output.when(item.create_time),
            output.when(item.end_time),
            f"{item.error_type}: {item.error}" if item.error_type else "",
        ]
        for item in items
    ]
    output.table(columns, rows, caption=_state(state))


@app.command()
def cancel(
    ctx: typer.Context,
    ids: Annotated[list[int], typer.Argument(help="Queue item ids.", show_default=False)],
) -> None:
    """Cancel queue items: pending ones at once, a running one at its next step."""
    for item_id in ids:
        request = pb.CancelQueueItemRequest(id=item_id)
        item = client(ctx).queue.CancelQueueItem(request).queue_item
        output.say(f"item {item.id}: {output.label(pb.QueueItemStatus, item.status)}")


@app.command()
def clear(ctx: typer.Context) -> None:
    """Cancel every pending item; the running one goes on."""
    cancelled = client(ctx).queue.ClearQueue(pb.ClearQueueRequest()).cancelled_count
    output.say(f"cancelled {output.count(cancelled, 'pending item')}")


@app.command()
def pause(ctx: typer.Context) -> None:
    """Pause the queue: the running item finishes, no pending one starts."""
    output.say(_state(client(ctx).queue.PauseQueue(pb.PauseQueueRequest()).status))


@app.command()
def resume(ctx: typer.Context) -> None:
    """Resume a paused queue."""
    output.say(_state(client(ctx).queue.ResumeQueue(pb.ResumeQueueRequest()).status))
