"""Structured logging for every process: readable on a terminal, JSON lines otherwise.

The request id of the call being served is bound to the log context, so every line logged
while serving it carries the id (and `call_options` passes it on to every call made).
"""

from __future__ import annotations

import logging
import sys
import uuid

import structlog

from services.common.call_options import set_request_id
from services.common.settings import LogFormat


def bind_request_id(request_id: str | None) -> str:
    """Make `request_id` (or a new one) the current call's id and return it."""
    request_id = request_id or uuid.uuid4().hex
    set_request_id(request_id)
    structlog.contextvars.bind_contextvars(request_id=request_id)
    return request_id


def configure_logging(service: str, level: str, log_format: LogFormat) -> None:
    """Route structlog and the standard library's logging to stderr in one format."""
    json_lines = log_format is LogFormat.JSON or (
        log_format is LogFormat.AUTO and not sys.stderr.isatty()
    )
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_service(service),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _add_service(service: str) -> structlog.typing.Processor:
    def add(_logger: object, _method: str, event: structlog.typing.EventDict):
        event.setdefault("service", service)
        return event

    return add
