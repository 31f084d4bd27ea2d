"""Log lines: JSON with the service and the request id off a terminal, readable text on one."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from services.common.logs import bind_request_id, configure_logging
from services.common.settings import LogFormat


@pytest.fixture(autouse=True)
def restore_logging():
    """configure_logging changes process-wide state; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_json_lines_carry_service_and_request_id(capsys):
    configure_logging("downloader", "info", LogFormat.JSON)
    structlog.contextvars.clear_contextvars()
    bind_request_id("req-7")
    structlog.get_logger("test").info("job started", job_id=3)
    logging.getLogger("library").warning("from the standard library")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["event"] == "job started"
    assert (lines[0]["service"], lines[0]["request_id"], lines[0]["job_id"]) == (
        "downloader",
        "req-7",
        3,
    )
    assert (lines[1]["event"], lines[1]["level"]) == ("from the standard library", "warning")


def test_console_lines_are_plain_text_and_the_level_filters(capsys):
    configure_logging("invoker", "warning", LogFormat.CONSOLE)
    log = structlog.get_logger("test")
    log.info("not shown")
    log.warning("queue paused", items=2)
    err = capsys.readouterr().err
    assert "not shown" not in err
    assert "queue paused" in err
    assert "items=2" in err
    assert not err.lstrip().startswith("{")
