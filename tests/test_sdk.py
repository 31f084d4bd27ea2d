"""The SDK is a client only: importing it starts nothing and loads no server code."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.processes import REPO

PROBE = """
import json, sys, threading
import clients, clients.sdk
print(json.dumps({"modules": sorted(sys.modules), "threads": threading.active_count()}))
"""

# What a client needs: the settings it shares with the services, how calls are made, and
# the mapping of statuses to domain errors.
SHARED_MODULES = {
    "services",
    "services.common",
    "services.common.settings",
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
    assert not {"structlog", "aiohttp", "torch"} & set(loaded["modules"])
    assert loaded["threads"] == 1
