"""`easel models` against a real model manager: install with its progress to the end,
list, show, probe, sync and remove, and the exit codes of what goes wrong."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli.conftest import Easel
from tests.model_fixtures import ModelZoo
from tests.processes import wait_serving
from tests.remote_host import RemoteHost


@pytest.fixture
def manager(run_service) -> None:
    wait_serving(run_service("model_manager"))


def drop(model: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model, target)
    return target


def test_a_model_is_installed_listed_shown_and_removed(
    manager, easel: Easel, easel_env, model_zoo: ModelZoo
):
    root = Path(easel_env["EASEL_ROOT"])
    source = drop(model_zoo.sd1_lora, root / "incoming" / "style.safetensors")

    installed = easel.ok("models", "install", str(source), "--name", "my-style")
    [model] = easel.json("models", "list")
    assert model["name"] == "my-style"
    assert (model["base"], model["type"]) == ("BASE_MODEL_TYPE_SD_1", "MODEL_TYPE_LORA")
    assert f"installed my-style as {model['key']}" in installed.stdout
    assert (root / "models" / model["path"]).is_file()

    table = easel.ok("models", "list").stdout
    assert model["key"] in table
    assert "sd-1" in table
    assert "lora" in table
    assert easel.json("models", "list", "--type", "main") == []
    assert easel.json("models", "show", model["key"])["path"] == model["path"]
    assert "my-style" in easel.ok("models", "show", model["key"]).stdout

    removed = easel.ok("models", "remove", model["key"])
    assert "deleted its files" in removed.stdout
    assert not (root / "models" / model["path"]).exists()
    assert source.is_file()  # the install copied it

    missing = easel("models", "show", model["key"])
    assert missing.exit_code == 3
    assert "MODEL_NOT_FOUND" in missing.stderr
    assert "easel models list" in missing.stderr


def test_an_install_that_fails_exits_5_and_registers_nothing(manager, easel: Easel, easel_env):
    notes = Path(easel_env["EASEL_ROOT"]) / "incoming" / "notes.safetensors"
    notes.parent.mkdir()
    notes.write_bytes(b"not a model at all")

    failed = easel("models", "install", str(notes))
    assert failed.exit_code == 5
    assert "failed" in failed.stderr
    assert easel.json("models", "list") == []


def test_an_install_refused_by_the_service_says_why(manager, easel: Easel, tmp_path: Path):
    outside = tmp_path / "elsewhere" / "model.safetensors"  # outside the root
    outside.parent.mkdir()
    outside.write_bytes(b"x")

    refused = easel("models", "install", str(outside))
    assert refused.exit_code == 6
    assert "PATH_NOT_ALLOWED" in refused.stderr
    assert "hint:" in refused.stderr
    assert "Traceback" not in refused.output


def test_probe_describes_a_model_without_installing_it(
    manager, easel: Easel, easel_env, model_zoo: ModelZoo
):
    source = drop(model_zoo.sd1_lora, Path(easel_env["EASEL_ROOT"]) / "lora.safetensors")

    probed = easel.json("models", "probe", str(source))
    assert (probed["base"], probed["type"]) == ("BASE_MODEL_TYPE_SD_1", "MODEL_TYPE_LORA")
    assert "sd-1" in easel.ok("models", "probe", str(source)).stdout
    assert easel.json("models", "list") == []


def test_sync_reports_and_registers_models_found_in_the_models_folder(
    manager, easel: Easel, easel_env, model_zoo: ModelZoo
):
    models_dir = Path(easel_env["EASEL_ROOT"]) / "models"
    drop(model_zoo.sd1_lora, models_dir / "sd-1" / "lora" / "found.safetensors")

    report = easel.json("models", "sync")
    assert [found["registered"] for found in report["found"]] == [False]
    assert easel.json("models", "list") == []

    registered = easel.ok("models", "sync", "--register-new")
    assert "registered" in registered.stdout
    [model] = easel.json("models", "list")
    assert model["path"].endswith("found.safetensors")


def test_bad_usage_exits_2(manager, easel: Easel):
    unknown_base = easel("models", "list", "--base", "sd-9")
    assert unknown_base.exit_code == 2
    assert "sd-9" in unknown_base.output
    assert easel("models", "show").exit_code == 2  # no key


@pytest.fixture
async def remote() -> AsyncIterator[RemoteHost]:
    host = RemoteHost()
    await host.start()
    yield host
    await host.stop()


async def test_a_url_install_follows_its_download_to_the_end(
    run_service, easel_env, easel: Easel, remote: RemoteHost, model_zoo: ModelZoo
):
    easel_env["EASEL_ALLOWED_NETWORKS"] = json.dumps(["127.0.0.0/8"])
    wait_serving(run_service("downloader"))
    wait_serving(run_service("model_manager"))
    remote.files["style.safetensors"] = model_zoo.sd1_lora.read_bytes()
    url = remote.url("/slow/style.safetensors?delay=0.01")

    # In a thread, so that this loop goes on serving the remote host meanwhile.
    installed = await asyncio.to_thread(easel.ok, "models", "install", url, "--json")
    job = json.loads(installed.stdout)
    assert job["status"] == "INSTALL_STATUS_COMPLETED"
    assert int(job["bytes"]) == int(job["total_bytes"]) == model_zoo.sd1_lora.stat().st_size
    [model] = easel.json("models", "list")
    assert (model["key"], model["source"]) == (job["config_out"]["key"], url)

    missing = await asyncio.to_thread(easel, "models", "install", remote.url("/status/404"))
    assert missing.exit_code == 5
    assert "REMOTE_NOT_FOUND" in missing.stderr
    assert "Check the repo id or URL" in missing.stderr
