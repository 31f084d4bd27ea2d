"""The SDK is a client only: importing it starts nothing and loads no server code; a failed
call, streams included, raises the domain error its status stands for."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clients.sdk import EaselClient
from easel.downloader.v1 import download_service_pb2 as downloads
from easel.model_manager.v1 import model_install_service_pb2 as installs
from services.common import errors
from tests.processes import REPO, client_settings, wait_serving

PROBE = """
import json, sys, threading
from clients.sdk import AsyncEaselClient, EaselClient
print(json.dumps({"modules": sorted(sys.modules), "threads": threading.active_count()}))
"""

# What a client needs: the settings it shares with the services, how calls are made, and
# the mapping of statuses to domain errors.
SHARED_MODULES = {
    "services",
    "services.common",
    "services.common.settings",
    "services.common.database_url",
    "services.common.errors",
    "services.common.error_status",
    "services.common.call_options",
}


def test_importing_the_sdk_loads_no_server_code_and_starts_nothing():
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True
    )
    loaded = json.loads(done.stdout)
    ours = {name for name in loaded["modules"] if name.split(".")[0] == "services"}
    assert ours == SHARED_MODULES
    top_level = {name.split(".")[0] for name in loaded["modules"]}
    assert not {"structlog", "aiohttp", "torch", "diffusers", "transformers", "PIL"} & top_level
    clients = {name for name in loaded["modules"] if name.split(".")[0] == "clients"}
    assert all(
        name in ("clients", "clients.sdk") or name.startswith("clients.sdk.") for name in clients
    )
    assert loaded["threads"] == 1


def test_a_failing_sdk_stream_raises_the_domain_error(run_service, easel_env):
    wait_serving(run_service("downloader"))
    wait_serving(run_service("model_manager"))
    with EaselClient(client_settings(easel_env)) as client:
        stream = client.downloads.WatchDownloads(downloads.WatchDownloadsRequest(job_ids=[41]))
        with pytest.raises(errors.NotFoundError) as missing:
            next(stream)
        assert missing.value.reason == "DOWNLOAD_JOB_NOT_FOUND"

        stream = client.model_install.WatchInstallJobs(
            installs.WatchInstallJobsRequest(job_ids=[0])
        )
        with pytest.raises(errors.InvalidArgumentError) as invalid:
            list(stream)
        assert [violation.field for violation in invalid.value.violations] == ["job_ids"]
