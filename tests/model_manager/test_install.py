"""Installing models end to end: the model manager and the downloader as real processes,
a HuggingFace Hub stand-in and a plain HTTP host as the remote side, tiny real models."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from google.protobuf import struct_pb2

from easel.downloader.v1 import download_service_pb2 as download_pb
from easel.model_manager.v1 import model_install_service_pb2 as pb
from easel.model_manager.v1 import model_pb2, model_record_service_pb2_grpc
from easel.model_manager.v1 import model_record_service_pb2 as records_pb
from services.common import errors
from services.model_manager.records.configs import parse_config
from services.model_manager.records.open_store import open_record_store
from tests.model_fixtures import ModelZoo
from tests.model_manager.install_suite import GATE_TOKEN, publish, until
from tests.processes import start_service, wait_serving


async def test_a_local_file_is_copied_in_and_registered(suite, model_zoo: ModelZoo):
    source = suite.source(model_zoo.sd1_lora)
    job = await suite.install_and_wait(heuristic_source=str(source))
    assert job.status == pb.INSTALL_STATUS_COMPLETED, job.error
    config = job.config_out
    assert (config.base, config.type) == (model_pb2.BASE_MODEL_TYPE_SD_1, model_pb2.MODEL_TYPE_LORA)
    assert config.path == f"sd-1/lora/{source.name}"
    assert config.hash.startswith("blake3:")
    assert config.source == str(source)
    assert source.exists()  # a copy: the original stays
    assert suite.files() == [f"sd-1/lora/{source.name}"]
    assert [m.key for m in await suite.models()] == [config.key]


async def test_an_inplace_install_registers_the_folder_where_it_is(suite, model_zoo: ModelZoo):
    source = suite.source(model_zoo.sd1_diffusers)
    job = await suite.install_and_wait(local=pb.LocalModelSource(path=str(source), inplace=True))
    assert job.status == pb.INSTALL_STATUS_COMPLETED, job.error
    assert job.inplace
    assert job.config_out.path == str(source)
    assert job.config_out.format == model_pb2.MODEL_FORMAT_DIFFUSERS
    assert suite.files() == []


async def test_a_url_install_downloads_then_registers(suite, model_zoo: ModelZoo):
    suite.remote.files["detail.safetensors"] = model_zoo.sd1_lora.read_bytes()
    url = suite.remote.url("/files/detail.safetensors")
    job = await suite.create(url=pb.UrlModelSource(url=url), config={"name": "detail tweaker"})
    events = [
        response.event
        async for response in suite.install.WatchInstallJobs(
            pb.WatchInstallJobsRequest(job_ids=[job.id]), timeout=60
        )
    ]
    kinds = [event.WhichOneof("payload") for event in events]
    assert kinds[0] == "snapshot"
    assert "downloading" in kinds
    assert kinds.index("downloading") < kinds.index("running")
    assert kinds[-2:] == ["running", "completed"]
    downloading = [e.downloading for e in events if e.HasField("downloading")]
    assert downloading[-1].total_bytes == len(suite.remote.files["detail.safetensors"])
    completed = events[-1].completed
    assert completed.config.name == "detail tweaker"  # overrides win over probed values
    assert completed.config.path == "sd-1/lora/detail.safetensors"
    assert completed.config.source == url
    assert suite.files() == ["sd-1/lora/detail.safetensors"]


async def test_a_repo_installs_only_the_files_of_its_variant(suite, model_zoo: ModelZoo):
    publish(
        suite.hub.root,
        "org/tiny-sd",
        model_zoo.sd1_diffusers,
        model_zoo.sd1_diffusers_fp16,
        tags=["diffusers", "text-to-image"],
    )
    job = await suite.install_and_wait(heuristic_source="org/tiny-sd:fp16")
    assert job.status == pb.INSTALL_STATUS_COMPLETED, job.error
    config = job.config_out
    assert config.path == "sd-1/main/tiny-sd"
    assert config.source_type == model_pb2.SOURCE_TYPE_HF_REPO_ID
    assert list(config.tags) == ["diffusers", "text-to-image"]
    weights = [f for f in suite.files() if f.endswith(".safetensors")]
    assert weights
    assert all(".fp16." in f for f in weights)
    assert len(job.download_job_ids) == 1  # the whole repo is one multi-file download

    metadata = await suite.call(
        suite.install, "GetModelMetadata", pb.GetModelMetadataRequest(key=config.key)
    )
    assert metadata.metadata.repo_id == "org/tiny-sd"
    assert metadata.metadata.author == "org"
    assert "text-to-image" in metadata.metadata.tags
    tagged = await suite.call(
        suite.records, "ListModels", records_pb.ListModelsRequest(tags=["text-to-image"])
    )
    assert [m.key for m in tagged.models] == [config.key]


async def test_a_missing_variant_falls_back_and_a_subfolder_narrows(suite, model_zoo: ModelZoo):
    publish(suite.hub.root, "org/plain-sd", model_zoo.sd1_diffusers)
    job = await suite.install_and_wait(heuristic_source="org/plain-sd:fp16")
    assert job.status == pb.INSTALL_STATUS_COMPLETED, job.error
    assert not any(".fp16." in f for f in suite.files())
    vae = await suite.install_and_wait(heuristic_source="org/plain-sd::vae")
    assert vae.status == pb.INSTALL_STATUS_COMPLETED, vae.error
    assert vae.config_out.type == model_pb2.MODEL_TYPE_VAE
    assert vae.config_out.path.startswith("sd-1/vae/")


async def test_a_gated_repo_needs_its_token(suite, model_zoo: ModelZoo):
    publish(suite.hub.root, "org/gated", model_zoo.vae_diffusers, gated=True)
    refused = await suite.install_and_wait(heuristic_source="org/gated")
    assert refused.status == pb.INSTALL_STATUS_ERROR
    assert refused.error_type == "REMOTE_ACCESS_DENIED"
    assert "401" in refused.error
    allowed = await suite.install_and_wait(heuristic_source="org/gated", access_token=GATE_TOKEN)
    assert allowed.status == pb.INSTALL_STATUS_COMPLETED, allowed.error
    assert allowed.source.hugging_face.has_access_token
    assert GATE_TOKEN not in suite.model_manager.log()


@pytest.mark.parametrize(
    ("source", "error_type"),
    [
        ("org/does-not-exist", "REMOTE_NOT_FOUND"),
        ("REMOTE/files/missing.safetensors", "REMOTE_NOT_FOUND"),
        ("REMOTE/status/500", "DOWNLOAD_FAILED"),
    ],
)
async def test_failed_remote_installs_leave_nothing(suite, source, error_type):
    source = source.replace("REMOTE", suite.remote.url(""))
    job = await suite.install_and_wait(heuristic_source=source)
    assert job.status == pb.INSTALL_STATUS_ERROR
    assert job.error_type == error_type
    assert await suite.models() == []
    assert suite.files() == []


async def test_files_that_are_no_model(suite, model_zoo: ModelZoo):
    text = suite.source(model_zoo.text_file)
    unknown = await suite.install_and_wait(heuristic_source=str(text))
    assert (unknown.status, unknown.error_type) == (pb.INSTALL_STATUS_ERROR, "UNKNOWN_MODEL")
    truncated = await suite.install_and_wait(
        heuristic_source=str(suite.source(model_zoo.truncated))
    )
    assert truncated.error_type == "MODEL_FILE_CORRUPT"
    malicious = suite.source(next(iter(model_zoo.malicious.values())))
    unsafe = await suite.install_and_wait(heuristic_source=str(malicious))
    assert unsafe.error_type == "UNSAFE_PICKLE"
    assert not model_zoo.malicious_marker.exists()
    assert await suite.models() == []
    assert suite.files() == []

    named = await suite.install_and_wait(
        heuristic_source=str(suite.source(model_zoo.unknown_weights)),
        config={"type": "lora", "base": "sd-1"},
    )
    assert named.status == pb.INSTALL_STATUS_COMPLETED, named.error


async def test_bad_sources_are_refused_at_once(suite, tmp_path):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    missing = str(suite.root / "nothing")
    relative = pb.LocalModelSource(path="relative/x")
    cases = [
        ({"heuristic_source": str(outside)}, errors.PermissionDeniedError, "PATH_NOT_ALLOWED"),
        ({"heuristic_source": "ftp://x/y"}, errors.InvalidArgumentError, "INVALID_SOURCE"),
        ({"heuristic_source": missing}, errors.FailedPreconditionError, "MODEL_FILES_MISSING"),
        ({"local": relative}, errors.InvalidArgumentError, "PATH_NOT_ALLOWED"),
    ]
    for fields, error, reason in cases:
        with pytest.raises(error) as caught:
            await suite.create(**fields)
        assert caught.value.reason == reason
    listed = await suite.call(suite.install, "ListInstallJobs", pb.ListInstallJobsRequest())
    assert list(listed.jobs) == []


async def test_cancelling_an_install_cancels_its_download(suite):
    suite.remote.add("big.safetensors", 4 * 1024 * 1024)
    job = await suite.create(heuristic_source=suite.remote.url("/slow/big.safetensors?delay=0.05"))

    async def cancel(job_id: int) -> pb.InstallJob:
        request = pb.CancelInstallJobRequest(id=job_id)
        return (await suite.call(suite.install, "CancelInstallJob", request)).job

    async def downloading() -> pb.InstallJob | None:
        current = await suite.job(job.id)
        return current if current.download_job_ids and current.bytes > 0 else None

    job = await until(downloading)  # mid-download, not before it began
    cancelled = await cancel(job.id)
    assert cancelled.status == pb.INSTALL_STATUS_CANCELLED
    request = download_pb.GetDownloadJobRequest(id=job.download_job_ids[0])
    download = (await suite.call(suite.downloads, "GetDownloadJob", request)).job
    assert download.status == download_pb.DOWNLOAD_JOB_STATUS_CANCELLED
    assert suite.files() == []
    assert (await cancel(job.id)).status == pb.INSTALL_STATUS_CANCELLED
    with pytest.raises(errors.NotFoundError):
        await cancel(999)


async def test_register_install_and_uninstall_paths(suite, model_zoo: ModelZoo):
    kept = suite.source(model_zoo.vae_checkpoint)
    registered = await suite.call(
        suite.install, "RegisterPath", pb.RegisterPathRequest(path=str(kept))
    )
    assert registered.model.path == str(kept)
    with pytest.raises(errors.AlreadyExistsError):
        await suite.call(suite.install, "RegisterPath", pb.RegisterPathRequest(path=str(kept)))

    moved = suite.source(model_zoo.sd1_checkpoint)
    installed = await suite.call(
        suite.install, "InstallPath", pb.InstallPathRequest(path=str(moved))
    )
    assert installed.model.path == f"sd-1/main/{moved.name}"
    assert not moved.exists()  # moved, not copied
    assert (suite.models_dir / installed.model.path).is_file()

    def uninstall(key: str, mode: int):
        return suite.call(
            suite.install, "UninstallModel", pb.UninstallModelRequest(key=key, mode=mode)
        )

    with pytest.raises(errors.PermissionDeniedError) as refused:
        await uninstall(registered.model.key, pb.UNINSTALL_MODE_DELETE_UNCONDITIONALLY)
    assert refused.value.reason == "UNCONDITIONAL_DELETE_DISABLED"
    outside = await uninstall(registered.model.key, pb.UNINSTALL_MODE_DELETE)
    assert not outside.files_deleted
    assert kept.exists()  # outside models_dir: the files stay
    inside = await uninstall(installed.model.key, pb.UNINSTALL_MODE_DELETE)
    assert inside.files_deleted
    assert suite.files() == []
    assert await suite.models() == []
    with pytest.raises(errors.NotFoundError):
        await uninstall(installed.model.key, pb.UNINSTALL_MODE_UNREGISTER)


async def test_download_and_cache_reuses_its_entries(suite, model_zoo: ModelZoo):
    suite.remote.files["emb.pt"] = model_zoo.sd1_embedding_pt.read_bytes()
    request = pb.DownloadAndCacheRequest(source=suite.remote.url("/files/emb.pt"))
    first = await suite.call(suite.install, "DownloadAndCache", request)
    assert not first.cached
    assert Path(first.local_path).read_bytes() == suite.remote.files["emb.pt"]
    assert Path(first.local_path).is_relative_to(suite.models_dir / ".cache")
    second = await suite.call(suite.install, "DownloadAndCache", request)
    assert (second.cached, second.local_path) == (True, first.local_path)
    assert len(suite.remote.requests_to("/files/emb.pt")) == 1


async def test_sync_reports_vanished_files_and_finds_new_ones(suite, model_zoo: ModelZoo):
    installed = await suite.install_and_wait(heuristic_source=str(suite.source(model_zoo.sd1_lora)))
    (suite.models_dir / installed.config_out.path).unlink()
    dropped = suite.models_dir / "sd-1" / "vae" / "dropped.safetensors"
    dropped.parent.mkdir(parents=True)
    shutil.copy2(model_zoo.vae_checkpoint, dropped)

    dry = await suite.call(
        suite.install,
        "SyncModels",
        pb.SyncModelsRequest(remove_missing=True, dry_run=True, register_new=True),
    )
    assert [(m.model.key, m.removed) for m in dry.missing] == [(installed.config_out.key, False)]
    assert [(f.model.path, f.registered) for f in dry.found] == [
        ("sd-1/vae/dropped.safetensors", False)
    ]
    done = await suite.call(
        suite.install, "SyncModels", pb.SyncModelsRequest(remove_missing=True, register_new=True)
    )
    assert [m.removed for m in done.missing] == [True]
    assert [m.path for m in await suite.models()] == ["sd-1/vae/dropped.safetensors"]


async def test_probe_returns_the_config_without_installing(suite, model_zoo: ModelZoo):
    source = suite.source(model_zoo.sdxl_checkpoint)
    config = struct_pb2.Struct()
    config.update({"name": "my xl"})
    probed = await suite.call(
        suite.install, "ProbeModel", pb.ProbeModelRequest(path=str(source), config=config)
    )
    assert probed.model.base == model_pb2.BASE_MODEL_TYPE_SDXL
    assert probed.model.name == "my xl"
    assert probed.model.hash == ""
    assert probed.model.key == ""
    assert not probed.model.HasField("create_time")
    assert not probed.model.HasField("update_time")
    assert await suite.models() == []


async def test_a_single_file_and_a_typed_source_from_a_repo(suite, model_zoo: ModelZoo):
    publish(suite.hub.root, "org/mixed", model_zoo.sd1_diffusers, model_zoo.sd1_diffusers_fp16)
    (suite.hub.root / "org/mixed/loras").mkdir()
    shutil.copy2(model_zoo.sd1_lora, suite.hub.root / "org/mixed/loras/style.safetensors")
    single = await suite.install_and_wait(heuristic_source="org/mixed::loras/style.safetensors")
    assert single.status == pb.INSTALL_STATUS_COMPLETED, single.error
    assert single.config_out.path == "sd-1/lora/style.safetensors"

    typed = pb.HuggingFaceModelSource(
        repo_id="org/mixed", variant=model_pb2.MODEL_REPO_VARIANT_FP16, subfolder="vae"
    )
    vae = await suite.install_and_wait(hugging_face=typed)
    assert vae.status == pb.INSTALL_STATUS_COMPLETED, vae.error
    assert vae.source_string == "org/mixed:fp16:vae"
    folder = suite.models_dir / vae.config_out.path
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.fp16.safetensors",
    ]


async def test_a_variant_on_its_own_branch_is_used(suite, model_zoo: ModelZoo):
    publish(suite.hub.root, "org/branchy", model_zoo.sd1_diffusers)
    shutil.copytree(model_zoo.sd1_diffusers_fp16, suite.hub.root / "org" / "branchy@fp16")
    job = await suite.install_and_wait(heuristic_source="org/branchy:fp16")
    assert job.status == pb.INSTALL_STATUS_COMPLETED, job.error
    assert any(".fp16." in f for f in suite.files())


async def test_jobs_are_listed_by_source_waited_on_together_and_pruned(suite, model_zoo: ModelZoo):
    sources = [str(suite.source(model)) for model in (model_zoo.sd1_lora, model_zoo.sdxl_lora)]
    for source in sources:
        await suite.create(heuristic_source=source)
    await suite.call(suite.install, "WaitAllInstallJobs", pb.WaitAllInstallJobsRequest())
    listed = await suite.call(suite.install, "ListInstallJobs", pb.ListInstallJobsRequest())
    assert [job.status for job in listed.jobs] == [pb.INSTALL_STATUS_COMPLETED] * 2
    by_source = await suite.call(
        suite.install, "ListInstallJobs", pb.ListInstallJobsRequest(source=sources[1])
    )
    assert [job.source_string for job in by_source.jobs] == [sources[1]]
    pruned = await suite.call(suite.install, "PruneInstallJobs", pb.PruneInstallJobsRequest())
    assert list(pruned.pruned_job_ids) == [1, 2]
    with pytest.raises(errors.NotFoundError) as gone:
        await suite.call(suite.install, "GetInstallJob", pb.GetInstallJobRequest(id=1))
    assert gone.value.reason == "INSTALL_JOB_NOT_FOUND"
    assert len(await suite.models()) == 2  # pruning forgets jobs, not models


@pytest.mark.parametrize("suite_settings", [{"allow_unconditional_delete": "true"}])
async def test_unconditional_delete_when_the_server_allows_it(suite, model_zoo: ModelZoo):
    outside = suite.source(model_zoo.sd1_lora)
    request = pb.RegisterPathRequest(path=str(outside))
    registered = (await suite.call(suite.install, "RegisterPath", request)).model
    request = pb.UninstallModelRequest(
        key=registered.key, mode=pb.UNINSTALL_MODE_DELETE_UNCONDITIONALLY
    )
    done = await suite.call(suite.install, "UninstallModel", request)
    assert done.files_deleted
    assert not outside.exists()

    kept = suite.source(model_zoo.vae_checkpoint)
    request = pb.RegisterPathRequest(path=str(kept))
    registered = (await suite.call(suite.install, "RegisterPath", request)).model
    request = pb.UninstallModelRequest(key=registered.key, mode=pb.UNINSTALL_MODE_UNREGISTER)
    assert not (await suite.call(suite.install, "UninstallModel", request)).files_deleted
    assert kept.exists()


@pytest.mark.parametrize("suite_settings", [{"download_cache_bytes": "3000"}])
async def test_the_download_cache_evicts_the_least_recently_used(suite):
    for name in ("a", "b", "c"):
        suite.remote.add(name, 1500)

    async def cached(name: str) -> bool:
        request = pb.DownloadAndCacheRequest(source=suite.remote.url(f"/files/{name}"))
        return (await suite.call(suite.install, "DownloadAndCache", request)).cached

    assert [await cached(name) for name in ("a", "b")] == [False, False]
    await asyncio.sleep(0.02)  # distinct use times
    assert await cached("a")  # a is now the most recently used
    await asyncio.sleep(0.02)
    assert not await cached("c")  # over the limit: b, the least recently used, goes
    assert [await cached(name) for name in ("a", "c", "b")] == [True, True, False]


async def test_start_up_sync_follows_its_settings(tmp_path, easel_env, model_zoo: ModelZoo):
    root = Path(easel_env["EASEL_ROOT"])
    models_dir = root / "models"
    store = open_record_store(root / "databases" / "models.db")
    gone = parse_config(
        {"name": "gone", "base": "sd-1", "type": "lora", "format": "lycoris", "path": "x.bin"}
    )
    store.add(gone)
    store.close()
    dropped = models_dir / "sd-1" / "lora" / "dropped.safetensors"
    dropped.parent.mkdir(parents=True)
    shutil.copy2(model_zoo.sd1_lora, dropped)
    env = {
        **easel_env,
        "EASEL_REMOVE_MISSING_MODELS": "true",
        "EASEL_REGISTER_FOUND_MODELS": "true",
    }
    service = start_service("model_manager", env, tmp_path)
    try:
        await asyncio.to_thread(wait_serving, service)
        async with service.channel() as channel:
            stub = model_record_service_pb2_grpc.ModelRecordServiceStub(channel)
            listed = await stub.ListModels(records_pb.ListModelsRequest())
    finally:
        service.stop()
    assert [model.path for model in listed.models] == ["sd-1/lora/dropped.safetensors"]
    assert "model files missing" in service.log()
