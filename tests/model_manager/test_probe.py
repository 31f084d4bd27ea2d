"""Probing: every kind, format, base and variant from real fixture files, and every way a
file can fail to be a model (unknown, corrupt, missing, hostile)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
)
from services.model_manager.probe.model_probe import probe_model
from services.model_manager.probe.pickle_scan import scan_pickle
from services.model_manager.probe.safetensors_header import TensorInfo, read_safetensors_header
from tests.model_fixtures import (
    IMAGE_ENCODER_ID,
    SDXL_IMAGE_ENCODER_ID,
    ModelZoo,
    save_safetensors,
    write_malicious_pickles,
)

REPO = Path(__file__).resolve().parents[2]

MAIN = {"type": "main", "variant": "normal", "prediction_type": "epsilon"}
NO_UPCAST = {"upcast_attention": False}
V_PREDICTION = {"prediction_type": "v_prediction", "upcast_attention": True}
DIFFUSERS = {"format": "diffusers", "repo_variant": "default"}
CHECKPOINT = {"format": "checkpoint"}

# zoo attribute -> every probed field but name and description.
CASES = {
    "sd1_diffusers": MAIN | NO_UPCAST | DIFFUSERS | {"base": "sd-1"},
    "sd1_diffusers_fp16": MAIN | NO_UPCAST | DIFFUSERS | {"base": "sd-1", "repo_variant": "fp16"},
    "sd1_inpaint_diffusers": MAIN | NO_UPCAST | DIFFUSERS | {"base": "sd-1", "variant": "inpaint"},
    "sd2_v_diffusers": MAIN | V_PREDICTION | DIFFUSERS | {"base": "sd-2"},
    "sdxl_diffusers": MAIN | NO_UPCAST | DIFFUSERS | {"base": "sdxl"},
    "sdxl_refiner_diffusers": MAIN | NO_UPCAST | DIFFUSERS | {"base": "sdxl-refiner"},
    "sd1_checkpoint": MAIN | NO_UPCAST | CHECKPOINT | {"base": "sd-1"},
    "sd1_inpaint_checkpoint": MAIN
    | NO_UPCAST
    | CHECKPOINT
    | {"base": "sd-1", "variant": "inpaint"},
    "sd2_checkpoint": MAIN | V_PREDICTION | CHECKPOINT | {"base": "sd-2"},
    "sd2_depth_checkpoint": MAIN | NO_UPCAST | CHECKPOINT | {"base": "sd-2", "variant": "depth"},
    "sdxl_checkpoint": MAIN | NO_UPCAST | CHECKPOINT | {"base": "sdxl"},
    "sdxl_refiner_checkpoint": MAIN | NO_UPCAST | CHECKPOINT | {"base": "sdxl-refiner"},
    "sd1_ckpt": MAIN | NO_UPCAST | CHECKPOINT | {"base": "sd-1"},
    "sd2_base_ckpt": MAIN | NO_UPCAST | CHECKPOINT | {"base": "sd-2"},
    "sd2_v_ckpt": MAIN | V_PREDICTION | CHECKPOINT | {"base": "sd-2"},
    "vae_checkpoint": {"type": "vae", "base": "sd-1"} | CHECKPOINT,
    "sdxl_vae_checkpoint": {"type": "vae", "base": "sdxl"} | CHECKPOINT,
    "vae_diffusers": {"type": "vae", "base": "sd-1"} | DIFFUSERS,
    "sdxl_vae_diffusers": {"type": "vae", "base": "sdxl"} | DIFFUSERS,
    "sd1_lora": {"type": "lora", "base": "sd-1", "format": "lycoris"},
    "sdxl_lora": {"type": "lora", "base": "sdxl", "format": "lycoris"},
    "sd2_peft_lora": {"type": "lora", "base": "sd-2", "format": "lycoris"},
    "sd1_loha": {"type": "lora", "base": "sd-1", "format": "lycoris"},
    "sdxl_lokr": {"type": "lora", "base": "sdxl", "format": "lycoris"},
    "sd1_lora_pickle": {"type": "lora", "base": "sd-1", "format": "lycoris"},
    "lora_diffusers": {"type": "lora", "base": "sd-1"} | DIFFUSERS,
    "sd1_embedding_pt": {"type": "embedding", "base": "sd-1", "format": "embedding_file"},
    "sd2_embedding": {"type": "embedding", "base": "sd-2", "format": "embedding_file"},
    "sdxl_embedding": {"type": "embedding", "base": "sdxl", "format": "embedding_file"},
    "embedding_folder": {"type": "embedding", "base": "sd-1", "format": "embedding_folder"},
    "controlnet_diffusers": {"type": "controlnet", "base": "sd-1"} | DIFFUSERS,
    "controlnet_checkpoint": {"type": "controlnet", "base": "sd-2"} | CHECKPOINT,
    "controlnet_single_file": {"type": "controlnet", "base": "sd-1"} | CHECKPOINT,
    "ip_adapter": {
        "type": "ip_adapter",
        "base": "sd-1",
        "format": "invokeai",
        "image_encoder_model_id": IMAGE_ENCODER_ID,
    },
    "sdxl_ip_adapter": {
        "type": "ip_adapter",
        "base": "sdxl",
        "format": "invokeai",
        "image_encoder_model_id": SDXL_IMAGE_ENCODER_ID,
    },
    "clip_vision": {"type": "clip_vision", "base": "any"} | DIFFUSERS,
    "t2i_adapter": {"type": "t2i_adapter", "base": "sd-1"} | DIFFUSERS,
    "sdxl_t2i_adapter": {"type": "t2i_adapter", "base": "sdxl"} | DIFFUSERS,
    "esrgan_x4": {"type": "upscaler", "base": "any", "scale": 4} | CHECKPOINT,
    "esrgan_x2": {"type": "upscaler", "base": "any", "scale": 2} | CHECKPOINT,
    "esrgan_old_x4": {"type": "upscaler", "base": "any", "scale": 4} | CHECKPOINT,
    "esrgan_old_x2": {"type": "upscaler", "base": "any", "scale": 2} | CHECKPOINT,
}


def default_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


@pytest.mark.parametrize("model", CASES)
def test_probes_every_kind(model_zoo: ModelZoo, model: str) -> None:
    path: Path = getattr(model_zoo, model)
    expected = CASES[model]
    name = default_name(path)

    probed = probe_model(path)

    assert probed.fields() == expected | {
        "name": name,
        "description": f"{expected['base']} {expected['type']} model {name}",
    }
    assert all(type(value) in (str, bool, int) for value in probed.fields().values())
    assert (probed.type, probed.base, probed.format) == (
        expected["type"],
        expected["base"],
        expected["format"],
    )


def test_description_reads_naturally(model_zoo: ModelZoo) -> None:
    assert probe_model(model_zoo.sd1_checkpoint).description == "sd-1 main model sd1_model"


def test_overrides_win_over_probed_values(model_zoo: ModelZoo) -> None:
    overrides = {
        "base": "sdxl",
        "name": "my vae",
        "tags": ["fixed", "fp16"],
        "vae_path": "x/y",
    }

    probed = probe_model(model_zoo.vae_checkpoint, overrides)

    assert probed.base == "sdxl"
    assert probed.name == "my vae"
    assert probed.description == "sdxl vae model my vae"
    assert probed.fields() == {
        "name": "my vae",
        "description": "sdxl vae model my vae",
        "type": "vae",
        "base": "sdxl",
        "format": "checkpoint",
        "tags": ["fixed", "fp16"],
        "vae_path": "x/y",
    }


def test_overrides_replace_main_model_settings(model_zoo: ModelZoo) -> None:
    overrides = {"prediction_type": "epsilon", "upcast_attention": False, "description": "d"}

    probed = probe_model(model_zoo.sd2_checkpoint, overrides)

    assert probed.prediction_type == "epsilon"
    assert probed.upcast_attention is False
    assert probed.fields()["description"] == "d"


def test_override_of_the_wrong_kind_names_the_field(model_zoo: ModelZoo) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        probe_model(model_zoo.sd1_checkpoint, {"base": "sd-9"})

    assert caught.value.reason == "INVALID_MODEL_CONFIG"
    assert caught.value.violations[0].field == "config.base"


@pytest.mark.parametrize(
    ("model", "seen"),
    [
        ("unknown_weights", "safetensors, 2 tensors, key prefixes: encoder., head."),
        ("text_file", "a .txt file of 12 bytes, not a weight file"),
        ("unknown_folder", "a folder holding: README.md"),
    ],
)
def test_unknown_model_says_what_was_seen(model_zoo: ModelZoo, model: str, seen: str) -> None:
    path = getattr(model_zoo, model)

    with pytest.raises(InvalidArgumentError) as caught:
        probe_model(path, {"type": "main"})

    assert caught.value.reason == "UNKNOWN_MODEL"
    assert caught.value.metadata == {"path": str(path), "seen": seen}


@pytest.mark.parametrize(
    ("model", "overrides", "model_format"),
    [
        ("unknown_weights", {"type": "main", "base": "sd-1"}, "checkpoint"),
        ("unknown_folder", {"type": "controlnet", "base": "sdxl"}, "diffusers"),
        ("unknown_weights", {"type": "lora", "base": "sd-2"}, "lycoris"),
        ("text_file", {"type": "embedding", "base": "sd-1"}, "embedding_file"),
    ],
)
def test_unknown_model_is_accepted_with_type_and_base(
    model_zoo: ModelZoo, model: str, overrides: dict[str, str], model_format: str
) -> None:
    probed = probe_model(getattr(model_zoo, model), overrides)

    assert probed.fields() == overrides | {
        "format": model_format,
        "name": probed.name,
        "description": f"{overrides['base']} {overrides['type']} model {probed.name}",
    }


def test_undecidable_base_asks_for_one(tmp_path: Path) -> None:
    layer = "lora_te_text_model_encoder_layers_0_self_attn_k_proj"
    path = save_safetensors(
        tmp_path / "te_only.safetensors",
        {f"{layer}.lora_down.weight": (4, 512), f"{layer}.lora_up.weight": (512, 4)},
    )

    with pytest.raises(InvalidArgumentError) as caught:
        probe_model(path)

    assert caught.value.reason == "UNKNOWN_BASE_MODEL"
    assert caught.value.metadata["seen"] == "LoRA without a cross-attention to_k layer"
    assert probe_model(path, {"base": "sd-1"}).fields()["base"] == "sd-1"


@pytest.mark.parametrize(
    ("pickle_file", "offender"),
    [
        ("archive", f"{os.system.__module__}.system"),
        ("os_system", "os.system"),
        ("exec", "builtins.exec"),
    ],
)
def test_unsafe_pickle_is_refused_unrun(
    model_zoo: ModelZoo, pickle_file: str, offender: str
) -> None:
    path = model_zoo.malicious[pickle_file]

    with pytest.raises(InvalidArgumentError) as caught:
        probe_model(path, {"type": "main", "base": "sd-1"})

    assert caught.value.reason == "UNSAFE_PICKLE"
    assert caught.value.metadata == {"path": str(path), "global": offender}
    assert not model_zoo.malicious_marker.exists()


def test_malicious_fixture_is_live(tmp_path: Path) -> None:
    """The refusal above matters: a plain unpickler runs the payload."""
    marker = tmp_path / "ran"
    evil = write_malicious_pickles(tmp_path / "evil", marker)["os_system"]

    loader = f"import pickle; pickle.load(open({str(evil)!r}, 'rb'))"
    subprocess.run([sys.executable, "-c", loader], check=True)

    assert marker.exists()


@pytest.mark.parametrize("model", ["truncated", "random_bytes"])
def test_unreadable_safetensors_is_corrupt(model_zoo: ModelZoo, model: str) -> None:
    path = getattr(model_zoo, model)

    with pytest.raises(InvalidArgumentError) as caught:
        probe_model(path)

    assert caught.value.reason == "MODEL_FILE_CORRUPT"
    assert caught.value.metadata == {"path": str(path)}


def test_garbage_pickle_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\x80\x02}q\x00(X\x01\x00\x00")

    with pytest.raises(InvalidArgumentError) as caught:
        probe_model(path)

    assert caught.value.reason == "MODEL_FILE_CORRUPT"


def test_cyclic_pickle_is_corrupt(tmp_path: Path) -> None:
    cycle: dict[str, object] = {}
    cycle["self"] = cycle
    path = tmp_path / "cycle.pt"
    path.write_bytes(pickle.dumps(cycle))

    with pytest.raises(InvalidArgumentError) as caught:
        probe_model(path)

    assert caught.value.reason == "MODEL_FILE_CORRUPT"


def test_header_longer_than_the_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes((1000).to_bytes(8, "little") + b"{}")

    with pytest.raises(InvalidArgumentError) as caught:
        read_safetensors_header(path)

    assert caught.value.reason == "MODEL_FILE_CORRUPT"


def test_broken_config_json_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")

    with pytest.raises(InvalidArgumentError) as caught:
        probe_model(tmp_path)

    assert caught.value.reason == "MODEL_FILE_CORRUPT"
    assert caught.value.metadata == {"path": str(tmp_path / "config.json")}


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FailedPreconditionError) as caught:
        probe_model(tmp_path / "nothing.safetensors")

    assert caught.value.reason == "MODEL_FILES_MISSING"
    assert caught.value.metadata == {"path": str(tmp_path / "nothing.safetensors")}


def test_main_folder_without_unet_config_is_missing_files(
    model_zoo: ModelZoo, tmp_path: Path
) -> None:
    (tmp_path / "model_index.json").write_bytes(
        (model_zoo.sd1_diffusers / "model_index.json").read_bytes()
    )

    with pytest.raises(FailedPreconditionError) as caught:
        probe_model(tmp_path)

    assert caught.value.metadata == {"path": str(tmp_path / "unet" / "config.json")}


def test_probe_reads_only_the_header(model_zoo: ModelZoo) -> None:
    """A 2 GiB (sparse) checkpoint probes by reading a few hundred bytes."""
    io_stats = Path("/proc/self/io")
    if not os.access(io_stats, os.R_OK):
        pytest.skip("needs Linux /proc/self/io to count bytes read")
    path = model_zoo.sparse_2g
    assert path.stat().st_size > 2 * 1024**3

    def bytes_read() -> int:
        return int(io_stats.read_text().split("rchar:")[1].split()[0])

    before = bytes_read()
    probed = probe_model(path)
    read = bytes_read() - before

    assert (probed.type, probed.base) == ("main", "sd-1")
    assert read < 64 * 1024


def test_folder_with_plain_and_fp16_weights_is_default(model_zoo: ModelZoo, tmp_path: Path) -> None:
    folder = tmp_path / "both"
    folder.mkdir()
    (folder / "config.json").write_bytes((model_zoo.vae_diffusers / "config.json").read_bytes())
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (folder / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")

    assert probe_model(folder).repo_variant == "default"


def test_safetensors_header_matches_the_library(model_zoo: ModelZoo) -> None:
    path = model_zoo.sdxl_diffusers / "unet" / "diffusion_pytorch_model.safetensors"

    header = read_safetensors_header(path)

    with safe_open(str(path), "pt") as library:
        expected = {key: tuple(library.get_slice(key).get_shape()) for key in library.keys()}  # noqa: SIM118
        assert library.metadata() == header.metadata
    assert {key: info.shape for key, info in header.tensors.items()} == expected


@pytest.mark.parametrize(
    "model", ["sd1_ckpt", "sd2_base_ckpt", "sd1_embedding_pt", "ip_adapter", "esrgan_x2"]
)
def test_pickle_scan_sees_what_torch_loads(model_zoo: ModelZoo, model: str) -> None:
    path = getattr(model_zoo, model)
    path = path / "ip_adapter.bin" if path.is_dir() else path
    dtypes = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64"}

    def described(content: object) -> object:
        if isinstance(content, torch.Tensor):
            return TensorInfo(dtypes[content.dtype], tuple(content.shape))
        if isinstance(content, dict):
            return {key: described(value) for key, value in content.items()}
        return content

    assert scan_pickle(path) == described(torch.load(path, weights_only=True))


def test_pickle_scan_keeps_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pt"
    content = {
        "half": torch.zeros(2, 3, dtype=torch.float16),
        "bf16": torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16)),
        "fp8": torch.zeros(5, dtype=torch.float8_e4m3fn),
        "step": 7,
        "blob": b"\x00\xff",
    }
    torch.save(content, path)

    assert scan_pickle(path) == {
        "half": TensorInfo("F16", (2, 3)),
        "bf16": TensorInfo("BF16", (4,)),
        "fp8": TensorInfo("F8_E4M3", (5,)),
        "step": 7,
        "blob": b"\x00\xff",
    }


def test_probe_modules_do_not_import_torch() -> None:
    code = (
        "import sys, json\n"
        "import services.model_manager.probe.model_probe\n"
        "import services.model_manager.probe.hashing\n"
        "import services.model_manager.probe.pickle_scan\n"
        "import services.model_manager.probe.safetensors_header\n"
        "heavy = ('torch', 'numpy', 'safetensors', 'diffusers', 'transformers')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )

    assert json.loads(result.stdout) == []
