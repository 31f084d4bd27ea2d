"""Conversions between queue items and QueueService messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import json_format, timestamp_pb2

from easel.invoker.v1 import queue_service_pb2 as pb
from services.common.proto_enums import EnumMap
from services.invoker.queue.batch import BatchField, BatchMode
from services.invoker.queue.items import QueueItem, QueueItemStatus, RunMode
from services.invoker.queue.queue import QueueStatus

STATUS = EnumMap(QueueItemStatus, pb.QueueItemStatus)
RUN_MODE = EnumMap(RunMode, pb.RunMode)
BATCH_MODE = EnumMap(BatchMode, pb.BatchMode)
STATUSES_FROM_PB = {STATUS.to_pb(status): status for status in QueueItemStatus}
BATCH_MODES = {BATCH_MODE.to_pb(mode): mode for mode in BatchMode}


def batch_field_from_pb(field: pb.BatchField) -> BatchField:
    values = json_format.MessageToDict(field.values)
    return BatchField(field.node_id, field.field, values)


def timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(moment)
    return message


def queue_item_to_pb(item: QueueItem) -> pb.QueueItem:
    message = pb.QueueItem(
        id=item.id,
        session_id=item.session_id,
        status=STATUS.to_pb(item.status),
        run_mode=RUN_MODE.to_pb(item.run_mode),
        create_time=timestamp(item.create_time),
        start_time=timestamp(item.start_time),
        end_time=timestamp(item.end_time),
        priority=item.priority,
        invoker_id=item.owner,
    )
    if item.error is not None:
        message.error_type = item.error.error_type
        message.error = item.error.error
        message.error_code = item.error.error_code
        message.error_node_id = item.error.error_node_id
    return message


def queue_status_to_pb(status: QueueStatus) -> pb.QueueStatus:
    counts = status.counts
    message = pb.QueueStatus(
        pending_count=counts.get(QueueItemStatus.PENDING, 0),
        running_count=counts.get(QueueItemStatus.RUNNING, 0),
        completed_count=counts.get(QueueItemStatus.COMPLETED, 0),
        failed_count=counts.get(QueueItemStatus.FAILED, 0),
        cancelled_count=counts.get(QueueItemStatus.CANCELLED, 0),
        paused=status.paused,
    )
    if status.current_item is not None:
        message.current_item.CopyFrom(queue_item_to_pb(status.current_item))
    return message
