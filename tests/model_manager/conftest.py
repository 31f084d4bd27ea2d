"""Fixtures for the model manager: the install suite of real processes (see `install_suite`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.hf_hub import HubStandIn
from tests.model_manager.install_suite import Suite
from tests.processes import start_service, wait_serving
from tests.remote_host import RemoteHost


@pytest.fixture
def suite_settings() -> dict[str, str]:
    """Extra model manager settings of a test's suite; tests parametrize it."""
    return {}


@pytest.fixture
async def suite(tmp_path, easel_env, suite_settings) -> AsyncIterator[Suite]:
    hub = HubStandIn(tmp_path / "hub")
    (tmp_path / "hub").mkdir()
    remote = RemoteHost()
    await hub.start()
    await remote.start()
    env = {
        **easel_env,
        "EASEL_ALLOWED_NETWORKS": json.dumps(["127.0.0.0/8"]),
        "EASEL_FREE_SPACE_RESERVE_BYTES": "0",
        "EASEL_HF_ENDPOINT": hub.endpoint,
        "HF_HUB_DISABLE_XET": "1",
        **{f"EASEL_{name.upper()}": value for name, value in suite_settings.items()},
    }
    root = Path(env["EASEL_ROOT"])
    try:
        downloader = await asyncio.to_thread(start_service, "downloader", env, tmp_path)
        model_manager = await asyncio.to_thread(start_service, "model_manager", env, tmp_path)
        await asyncio.gather(
            asyncio.to_thread(wait_serving, downloader),
            asyncio.to_thread(wait_serving, model_manager),
        )
        suite = Suite(root, root / "models", env, tmp_path, hub, remote, downloader, model_manager)
        await suite.connect()
        yield suite
        await suite.disconnect()
    finally:
        await hub.stop()
        await remote.stop()
