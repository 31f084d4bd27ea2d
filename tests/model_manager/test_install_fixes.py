"""Install service behaviours found wrong from outside: SyncModels' report, the download
cache under concurrency, watching all jobs, resolved repo variants, and a repo installed
twice. Each runs against the install suite of real processes (`install_suite`)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from easel.model_manager.v1 import model_install_service_pb2 as pb
from easel.model_manager.v1 import model_pb2
from tests.model_fixtures import ModelZoo
from tests.model_manager.install_suite import Suite, publish
from tests.processes import wait_serving

TERMINAL = ("completed", "error", "cancelled")


def drop(model: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model, target)


async def test_sync_reports_found_models_and_skips_hidden_folders(
    suite: Suite, model_zoo: ModelZoo
):
    drop(model_zoo.sd1_lora, suite.models_dir / "sd-1" / "lora" / "found.safetensors")
    drop(model_zoo.sd1_lora, suite.models_dir / ".trash" / "lora" / "old.safetensors")
    drop(model_zoo.sd1_lora, suite.models_dir / "sd-1" / "lora" / ".hidden.safetensors")

    async def sync(**fields: bool) -> pb.SyncModelsResponse:
        return await suite.call(suite.install, "SyncModels", pb.SyncModelsRequest(**fields))

    for fields in ({}, {"dry_run": True}, {"dry_run": True, "register_new": True}):
        report = await sync(**fields)
        assert [(f.model.path, f.registered) for f in report.found] == [
            ("sd-1/lora/found.safetensors", False)
        ], fields
        probed = report.found[0].model
        assert probed.type == model_pb2.MODEL_TYPE_LORA
        assert probed.key == ""  # no record, so no key and no times
        assert not probed.HasField("create_time")
        assert not probed.HasField("update_time")
        assert list(report.failed) == []
        assert await suite.models() == []

    done = await sync(register_new=True)
    assert [(f.model.path, f.registered) for f in done.found] == [
        ("sd-1/lora/found.safetensors", True)
    ]
    assert done.found[0].model.key
    assert done.found[0].model.HasField("create_time")
    assert [(m.key, m.path) for m in await suite.models()] == [
        (done.found[0].model.key, "sd-1/lora/found.safetensors")
    ]


async def test_concurrent_syncs_register_each_found_model_once(suite: Suite, model_zoo: ModelZoo):
    for index in range(6):
        drop(model_zoo.sd1_lora, suite.models_dir / "sd-1" / "lora" / f"found-{index}.safetensors")
    request = pb.SyncModelsRequest(register_new=True)
    reports = await asyncio.gather(
        *(suite.call(suite.install, "SyncModels", request) for _ in range(4))
    )
    assert [list(report.failed) for report in reports] == [[]] * 4
    registered = sorted(f.model.path for report in reports for f in report.found if f.registered)
    assert registered == [f"sd-1/lora/found-{index}.safetensors" for index in range(6)]
    assert len(await suite.models()) == 6


def test_the_start_up_report_lists_found_models(run_service, easel_env, model_zoo: ModelZoo):
    models_dir = Path(easel_env["EASEL_ROOT"]) / "models"
    drop(model_zoo.sd1_lora, models_dir / "sd-1" / "lora" / "dropped.safetensors")
    drop(model_zoo.sd1_lora, models_dir / ".trash" / "lora" / "old.safetensors")
    service = run_service("model_manager")
    wait_serving(service)
    assert service.stop() == 0
    entries = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    found = [entry["path"] for entry in entries if "without a record" in entry["event"]]
    assert found == ["sd-1/lora/dropped.safetensors"]
    assert not any("old.safetensors" in json.dumps(entry) for entry in entries)


@pytest.mark.parametrize("suite_settings", [{"download_cache_bytes": "1000"}])
async def test_a_cached_path_is_there_when_its_answer_comes(suite: Suite):
    """Every entry alone exceeds the limit, so each call's eviction would take all others."""
    sizes = {f"model-{index}.bin": 1500 + index for index in range(8)}
    for name, size in sizes.items():
        suite.remote.add(name, size)

    async def fetch(name: str) -> pb.DownloadAndCacheResponse:
        request = pb.DownloadAndCacheRequest(source=suite.remote.url(f"/files/{name}"))
        return await suite.call(suite.install, "DownloadAndCache", request)

    for _ in range(3):
        answers = await asyncio.gather(*(fetch(name) for name in sizes))
        assert [answer.size_bytes for answer in answers] == list(sizes.values())
        assert [Path(answer.local_path).name for answer in answers] == list(sizes)


async def test_watching_all_jobs_begins_each_new_job_with_a_snapshot(
    suite: Suite, model_zoo: ModelZoo
):
    suite.remote.add("big.safetensors", 4 * 1024 * 1024)
    slow = await suite.create(heuristic_source=suite.remote.url("/slow/big.safetensors?delay=0.05"))
    stream = suite.install.WatchInstallJobs(pb.WatchInstallJobsRequest(), timeout=60)
    try:
        first = (await stream.read()).event  # the watch is subscribed once this arrives
        assert (first.job_id, first.WhichOneof("payload")) == (slow.id, "snapshot")
        new = await suite.create(heuristic_source=str(suite.source(model_zoo.sd1_lora)))
        kinds: list[str] = []
        while not kinds or kinds[-1] not in TERMINAL:
            event = (await stream.read()).event
            if event.job_id == new.id:
                kinds.append(event.WhichOneof("payload"))
                if kinds == ["snapshot"]:
                    assert event.snapshot.job.source_string == new.source_string
    finally:
        stream.cancel()
    assert kinds == ["snapshot", "running", "completed"]
    await suite.call(suite.install, "CancelInstallJob", pb.CancelInstallJobRequest(id=slow.id))


async def test_a_repo_without_a_variant_shows_the_variant_it_installs(
    suite: Suite, model_zoo: ModelZoo
):
    publish(suite.hub.root, "org/tiny-sd", model_zoo.sd1_diffusers, model_zoo.sd1_diffusers_fp16)
    whole = await suite.create(heuristic_source="org/tiny-sd")
    assert whole.source.hugging_face.variant == model_pb2.MODEL_REPO_VARIANT_FP16
    assert whole.source_string == "org/tiny-sd:fp16"
    typed = pb.HuggingFaceModelSource(repo_id="org/tiny-sd", subfolder="vae")
    vae = await suite.create(hugging_face=typed)
    assert vae.source.hugging_face.variant == model_pb2.MODEL_REPO_VARIANT_FP16
    assert vae.source_string == "org/tiny-sd:fp16:vae"

    done = await suite.wait(whole.id)
    assert done.status == pb.INSTALL_STATUS_COMPLETED, done.error
    assert done.config_out.source == "org/tiny-sd:fp16"
    weights = [f for f in suite.files() if f.startswith("sd-1/main/") and f.endswith("tensors")]
    assert weights
    assert all(".fp16." in f for f in weights)
    listed = await suite.call(
        suite.install, "ListInstallJobs", pb.ListInstallJobsRequest(source="org/tiny-sd")
    )
    assert [job.id for job in listed.jobs] == [whole.id]


async def test_a_repo_installed_again_fails_before_downloading(suite: Suite, model_zoo: ModelZoo):
    publish(suite.hub.root, "org/vae", model_zoo.vae_diffusers)
    first = await suite.install_and_wait(heuristic_source="org/vae")
    assert first.status == pb.INSTALL_STATUS_COMPLETED, first.error
    files = suite.files()
    fetched = [r for r in suite.hub.requests if "/resolve/" in r]

    again = await suite.install_and_wait(heuristic_source="org/vae")
    assert again.status == pb.INSTALL_STATUS_ERROR
    assert again.error_type == "MODEL_FILE_EXISTS"
    assert str(suite.models_dir / first.config_out.path) in again.error
    assert list(again.download_job_ids) == []
    assert [r for r in suite.hub.requests if "/resolve/" in r] == fetched
    assert suite.files() == files
