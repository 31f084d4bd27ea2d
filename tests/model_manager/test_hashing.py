"""Content hashes: BLAKE3 with its algorithm named, and folder hashes that depend on the
weights' content and relative paths only."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from blake3 import blake3

from services.common.errors import FailedPreconditionError
from services.model_manager.probe.hashing import hash_model, weight_files
from tests.model_fixtures import ModelZoo

FILES = {
    "unet/diffusion_pytorch_model.safetensors": b"unet" * 1000,
    "text_encoder/model.safetensors": b"text",
    "vae/diffusion_pytorch_model.safetensors": b"vae",
    "model_index.json": b"{}",
    "tokenizer/vocab.json": b"{}",
}


def write_folder(folder: Path, order: list[str]) -> Path:
    for relative in order:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(FILES[relative])
    return folder


def test_file_hash_is_blake3_of_its_bytes(tmp_path: Path) -> None:
    # Several MiB, so the multithreaded path runs.
    content = random.Random(0).randbytes(5 * 1024**2 + 17)
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)

    assert hash_model(path) == f"blake3:{blake3(content).hexdigest()}"


def test_same_content_same_hash(model_zoo: ModelZoo, tmp_path: Path) -> None:
    copy = shutil.copy(model_zoo.sd1_checkpoint, tmp_path / "renamed.safetensors")

    assert hash_model(Path(copy)) == hash_model(model_zoo.sd1_checkpoint)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.bin").write_bytes(b"")

    assert hash_model(tmp_path / "empty.bin") == f"blake3:{blake3().hexdigest()}"


def test_folder_hash_is_independent_of_creation_order(tmp_path: Path) -> None:
    names = list(FILES)
    first = write_folder(tmp_path / "a", names)
    second = write_folder(tmp_path / "b", names[::-1])

    assert hash_model(first) == hash_model(second)


def test_folder_hash_combines_weight_digests_in_path_order(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "model", list(FILES))
    weights = sorted(name for name in FILES if name.endswith(".safetensors"))
    combined = blake3(b"".join(blake3(FILES[name]).digest() for name in weights))

    assert [p.relative_to(folder).as_posix() for p in weight_files(folder)] == weights
    assert hash_model(folder) == f"blake3:{combined.hexdigest()}"


def test_folder_hash_ignores_configs(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "model", list(FILES))
    before = hash_model(folder)

    (folder / "model_index.json").write_text('{"edited": true}')
    (folder / "README.md").write_text("notes")

    assert hash_model(folder) == before


@pytest.mark.parametrize("model", ["sd1_diffusers", "sd1_checkpoint"])
def test_hash_changes_when_a_weight_changes(
    model_zoo: ModelZoo, tmp_path: Path, model: str
) -> None:
    source: Path = getattr(model_zoo, model)
    copy = tmp_path / source.name
    if source.is_dir():
        shutil.copytree(source, copy)
    else:
        shutil.copy(source, copy)
    assert hash_model(copy) == hash_model(source)
    weight = weight_files(copy)[-1] if copy.is_dir() else copy

    with weight.open("r+b") as file:
        file.seek(-1, 2)
        last = file.read(1)
        file.seek(-1, 2)
        file.write(bytes([last[0] ^ 1]))

    assert hash_model(copy) != hash_model(source)
    assert hash_model(copy).startswith("blake3:")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FailedPreconditionError) as caught:
        hash_model(tmp_path / "gone")

    assert caught.value.reason == "MODEL_FILES_MISSING"
