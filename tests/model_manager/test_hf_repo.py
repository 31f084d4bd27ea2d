"""HuggingFace repos through `huggingface_hub` against the hub stand-in: metadata, the
files a model needs in each variant, commit-pinned URLs, and the errors callers see."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import huggingface_hub.constants
import pytest
import torch
from diffusers import AutoencoderKL

from services.common import errors
from services.common.model_taxonomy import ModelRepoVariant
from services.model_manager.install.hf_repo import HuggingFaceRepo, RepoSelection
from services.model_manager.records.metadata import metadata_from_api_response
from tests.hf_hub import HubStandIn
from tests.model_fixtures import ModelZoo

GATE_TOKEN = "hf_gate_secret_1234"
TAGS = ["diffusers", "text-to-image", "tiny"]

# org/tiny-sd at default: the pipeline's folders with their plain safetensors, no exports,
# no alternates, no top-level checkpoint or README.
DEFAULT_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]


def _copy_tree(source: Path, dest: Path) -> None:
    shutil.copytree(source, dest, dirs_exist_ok=True)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory, model_zoo: ModelZoo) -> Path:
    """The repos every test reads (the stand-in reads them on each request)."""
    root = tmp_path_factory.mktemp("hub")
    tiny = root / "org" / "tiny-sd"
    _copy_tree(model_zoo.sd1_diffusers_fp16, tiny)
    _copy_tree(model_zoo.sd1_diffusers, tiny)  # plain configs win over the fp16 ones
    (tiny / "vae" / "diffusion_pytorch_model.fp16.safetensors").unlink()  # fp16 falls back
    (tiny / ".tags").write_text("\n".join(TAGS))
    _write(tiny / "README.md", b"# tiny")
    _write(tiny / "tiny-sd.safetensors", b"a single-file checkpoint beside the pipeline")
    _write(tiny / "onnx" / "unet" / "model.onnx", b"onnx")
    _write(tiny / "onnx" / "unet" / "config.json", b"{}")
    _write(tiny / "text_encoder" / "flax_model.msgpack", b"flax")
    _write(tiny / "unet" / "diffusion_pytorch_model.non_ema.safetensors", b"non-ema")
    _write(tiny / "unet" / "diffusion_pytorch_model.bin", b"pickled")
    _write(tiny / "unet" / "openvino_model.bin", b"openvino")
    _write(tiny / "loras" / "style.safetensors", model_zoo.sd1_lora.read_bytes())

    _copy_tree(model_zoo.sd1_diffusers, root / "org" / "plain-sd")
    _copy_tree(model_zoo.sd1_diffusers, root / "org" / "branchy")
    _copy_tree(model_zoo.sd1_diffusers_fp16, root / "org" / "branchy@fp16")
    _copy_tree(model_zoo.sd1_diffusers_fp16, root / "org" / "fp16-only")

    sharded = root / "org" / "sharded-vae"
    vae = AutoencoderKL.from_pretrained(model_zoo.vae_diffusers)
    vae.save_pretrained(sharded, max_shard_size="1MB")
    vae.to(torch.float16).save_pretrained(sharded, variant="fp16", max_shard_size="1MB")

    _copy_tree(model_zoo.vae_diffusers, root / "org" / "gated")
    (root / "org" / "gated" / ".gated").write_text(GATE_TOKEN)
    return root


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing may use the library's default endpoint or a token found on this machine:
    the default endpoint points nowhere, and HF_TOKEN opens the gated repo."""
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_TOKEN", GATE_TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")


@pytest.fixture
async def hub(hub_root: Path) -> AsyncIterator[HubStandIn]:
    server = HubStandIn(hub_root)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def repo(hub: HubStandIn) -> HuggingFaceRepo:
    return HuggingFaceRepo(hub.endpoint)


def _paths(selection: RepoSelection) -> list[str]:
    return [file.path for file in selection.files]


async def test_metadata_comes_from_the_hub_and_is_kept_verbatim(repo, hub_root: Path):
    metadata = await repo.fetch_metadata("org/tiny-sd", None)
    assert (metadata.repo_id, metadata.name, metadata.author) == ("org/tiny-sd", "tiny-sd", "org")
    assert metadata.tags == TAGS
    assert metadata.last_modified == datetime(2026, 11, 2, 10, tzinfo=UTC)
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in metadata.files
    assert "loras/style.safetensors" in metadata.files
    assert metadata.files == sorted(metadata.files)
    assert len(metadata.sha) == 40
    stored = json.loads(metadata.api_response)
    assert stored["sha"] == metadata.sha
    assert vars(metadata_from_api_response(stored)).items() <= vars(metadata).items()


async def test_the_default_variant_takes_only_the_pipelines_plain_files(repo):
    selection = await repo.select_files("org/tiny-sd", None, None, None)
    assert _paths(selection) == DEFAULT_FILES
    assert [f.local_path for f in selection.files] == DEFAULT_FILES
    assert (selection.model_dir_name, selection.is_folder) == ("tiny-sd", True)
    assert selection.revision == "main"
    explicit = await repo.select_files("org/tiny-sd", ModelRepoVariant.DEFAULT, None, None)
    assert _paths(explicit) == DEFAULT_FILES


async def test_fp16_takes_labelled_files_where_a_folder_has_them(repo):
    selection = await repo.select_files("org/tiny-sd", ModelRepoVariant.FP16, None, None)
    weights = [path for path in _paths(selection) if path.endswith(".safetensors")]
    assert weights == [
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",  # this folder has no fp16 file
    ]
    assert selection.revision == "main"


async def test_fp32_and_variants_that_do_not_exist_fall_back_to_the_default(repo):
    fp32 = await repo.select_files("org/tiny-sd", ModelRepoVariant.FP32, None, None)
    assert _paths(fp32) == DEFAULT_FILES
    onnx = await repo.select_files("org/tiny-sd", ModelRepoVariant.ONNX, None, None)
    assert _paths(onnx) == DEFAULT_FILES  # onnx/ is no component of the pipeline
    plain = await repo.select_files("org/plain-sd", ModelRepoVariant.FP16, None, None)
    assert not any(".fp16." in path for path in _paths(plain))
    assert plain.revision == "main"


async def test_a_folder_kept_only_in_fp16_still_yields_its_weights(repo):
    selection = await repo.select_files("org/fp16-only", None, None, None)
    weights = [path for path in _paths(selection) if path.endswith(".safetensors")]
    assert weights == [
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]


async def test_an_export_is_taken_when_asked_for(repo):
    flax = await repo.select_files("org/tiny-sd", ModelRepoVariant.FLAX, "text_encoder", None)
    assert [f.local_path for f in flax.files] == ["config.json", "flax_model.msgpack"]


async def test_a_subfolder_narrows_the_selection(repo):
    selection = await repo.select_files("org/tiny-sd", None, "vae", None)
    assert _paths(selection) == ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    assert [f.local_path for f in selection.files] == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert (selection.model_dir_name, selection.is_folder) == ("tiny-sd-vae", True)


async def test_a_single_file_is_taken_as_named(repo):
    selection = await repo.select_files(
        "org/tiny-sd", ModelRepoVariant.FP16, "loras/style.safetensors", None
    )
    [file] = selection.files
    assert (file.path, file.local_path) == ("loras/style.safetensors", "style.safetensors")
    assert (selection.model_dir_name, selection.is_folder) == ("style.safetensors", False)


async def test_every_shard_and_its_index_are_kept(repo, hub_root: Path):
    folder = hub_root / "org" / "sharded-vae"

    def shards(pattern: str) -> list[str]:
        return sorted(path.name for path in folder.glob(pattern))

    default_shards = shards("diffusion_pytorch_model-*-of-*.safetensors")
    fp16_shards = shards("diffusion_pytorch_model.fp16-*-of-*.safetensors")
    assert len(default_shards) > 1
    assert len(fp16_shards) > 1

    default = await repo.select_files("org/sharded-vae", None, None, None)
    assert _paths(default) == [
        "config.json",
        *default_shards,
        "diffusion_pytorch_model.safetensors.index.json",
    ]
    fp16 = await repo.select_files("org/sharded-vae", ModelRepoVariant.FP16, None, None)
    assert _paths(fp16) == [
        "config.json",
        *fp16_shards,
        "diffusion_pytorch_model.safetensors.index.fp16.json",
    ]


async def test_a_variant_on_its_own_branch_is_used(repo):
    main = await repo.select_files("org/branchy", None, None, None)
    fp16 = await repo.select_files("org/branchy", ModelRepoVariant.FP16, None, None)
    assert (main.revision, fp16.revision) == ("main", "fp16")
    assert main.sha != fp16.sha
    assert not any(".fp16." in path for path in _paths(main))
    assert any(".fp16." in path for path in _paths(fp16))
    assert all(f"/resolve/{fp16.sha}/" in file.url for file in fp16.files)


async def test_urls_fetch_the_inspected_commits_bytes(repo, hub: HubStandIn, hub_root: Path):
    metadata = await repo.fetch_metadata("org/tiny-sd", None)
    selection = await repo.select_files("org/tiny-sd", None, "unet", None)
    assert selection.sha == metadata.sha
    file = next(f for f in selection.files if f.path.endswith(".safetensors"))
    assert file.url == (
        f"{hub.endpoint}/org/tiny-sd/resolve/{selection.sha}/"
        "unet/diffusion_pytorch_model.safetensors"
    )
    async with aiohttp.ClientSession() as session, session.get(file.url) as response:
        assert response.status == 200
        body = await response.read()
    assert body == (hub_root / "org" / "tiny-sd" / file.path).read_bytes()
    assert file.size == len(body)


async def test_an_unknown_repo_or_subfolder_is_not_found(repo):
    for call in (
        repo.fetch_metadata("org/nothing-here", None),
        repo.select_files("org/nothing-here", ModelRepoVariant.FP16, None, None),
        repo.select_files("org/tiny-sd", None, "no/such/folder", None),
    ):
        with pytest.raises(errors.NotFoundError) as missing:
            await call
        assert missing.value.reason == "REMOTE_NOT_FOUND"
        assert missing.value.metadata["http_status"] == "404"


async def test_a_malformed_repo_id_is_an_invalid_source(repo):
    for call in (
        repo.fetch_metadata("org/two..dots", None),
        repo.select_files("org/two..dots", None, None, None),
    ):
        with pytest.raises(errors.InvalidArgumentError) as invalid:
            await call
        assert invalid.value.reason == "INVALID_SOURCE"


@pytest.mark.parametrize("token", [None, "hf_wrong_token"])
async def test_a_gated_repo_needs_its_token(repo, token: str | None):
    for call in (
        repo.fetch_metadata("org/gated", token),
        repo.select_files("org/gated", ModelRepoVariant.FP16, None, token),
    ):
        with pytest.raises(errors.PermissionDeniedError) as denied:
            await call
        assert denied.value.reason == "REMOTE_ACCESS_DENIED"
        assert denied.value.metadata == {"source": "org/gated", "http_status": "401"}
        assert "401" in denied.value.message
        assert GATE_TOKEN not in denied.value.message
        assert token is None or token not in denied.value.message


async def test_the_callers_token_opens_a_gated_repo(repo):
    metadata = await repo.fetch_metadata("org/gated", GATE_TOKEN)
    selection = await repo.select_files("org/gated", None, None, GATE_TOKEN)
    assert _paths(selection) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert selection.sha == metadata.sha
    headers = {"Authorization": f"Bearer {GATE_TOKEN}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.get(selection.files[0].url) as response,
    ):
        assert response.status == 200


async def test_an_unreachable_hub_is_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repo = HuggingFaceRepo(f"http://127.0.0.1:{port}")
    with pytest.raises(errors.UnavailableError) as down:
        await repo.select_files("org/tiny-sd", None, None, None)
    assert down.value.metadata == {"source": "org/tiny-sd"}
    assert f"127.0.0.1:{port}" in down.value.message
