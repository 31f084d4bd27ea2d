"""The tensor store: names, the memory budget, spilling to disk and back, pins, and the
clean-up of what an earlier process spilled."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
import torch

from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from services.inference.tensors.store import SPILL_DIR, TensorKind, TensorStore

KIB = 1024
LATENTS_BYTES = 4 * 16 * 16 * 4  # [1, 4, 16, 16] float32: 4 KiB


def _latents(value: float) -> dict[str, torch.Tensor]:
    return {"latents": torch.full((1, 4, 16, 16), float(value))}


@pytest.fixture
def store(tmp_path: Path):
    opened = TensorStore(tmp_path, budget_bytes=3 * LATENTS_BYTES)
    yield opened
    opened.close()


def _spill_files(root: Path) -> list[Path]:
    return sorted((root / SPILL_DIR).glob("*/*.safetensors"))


def test_a_stored_tensor_is_described_listed_read_and_deleted(store: TensorStore) -> None:
    conditioning = {
        "embeds": torch.randn(1, 77, 32, dtype=torch.float16),
        "pooled": torch.randn(1, 32, dtype=torch.float16),
    }
    first = store.put(_latents(1.0), kind=TensorKind.LATENTS, generation_id="g1", session_id="s1")
    second = store.put(
        conditioning, kind=TensorKind.CONDITIONING, generation_id="g2", session_id="s2"
    )

    assert first.shape == (1, 4, 16, 16)
    assert first.dtype == "float32"
    assert first.size_bytes == LATENTS_BYTES
    assert second.shape == (1, 77, 32)
    assert second.dtype == "float16"
    assert second.size_bytes == (77 * 32 + 32) * 2
    assert store.info(first.name) == first
    assert [info.name for info in store.list()] == [second.name, first.name]
    assert [info.name for info in store.list(kind=TensorKind.LATENTS)] == [first.name]
    assert [info.name for info in store.list(session_id="s2")] == [second.name]
    read = store.get(second.name)
    assert torch.equal(read.parts["pooled"], conditioning["pooled"])

    assert store.delete(first.name) == LATENTS_BYTES
    assert [info.name for info in store.list()] == [second.name]
    with pytest.raises(NotFoundError) as raised:
        store.get(first.name)
    assert raised.value.reason == "TENSOR_NOT_FOUND"


def test_unknown_and_empty_names(store: TensorStore) -> None:
    for call in (store.get, store.info, store.delete, lambda name: store.pin([name])):
        with pytest.raises(NotFoundError):
            call("9d3c4c5e-0000-4000-8000-000000000000")
        with pytest.raises(InvalidArgumentError):
            call("")


def test_a_view_is_stored_as_its_own_bytes(store: TensorStore) -> None:
    big = torch.zeros(64, 4, 16, 16)
    info = store.put({"latents": big[:1]}, kind=TensorKind.LATENTS, generation_id="g")
    assert store.resident_bytes == info.size_bytes == LATENTS_BYTES


def test_past_the_budget_the_least_recently_used_spill_and_come_back(
    store: TensorStore, tmp_path: Path
) -> None:
    names = [
        store.put(_latents(i), kind=TensorKind.LATENTS, generation_id=f"g{i}").name
        for i in range(3)
    ]
    assert _spill_files(tmp_path) == []
    store.get(names[0])  # now names[1] is the least recently used

    fourth = store.put(_latents(3), kind=TensorKind.LATENTS, generation_id="g3").name

    assert store.resident_bytes <= store.budget_bytes
    assert [store.is_resident(name) for name in [*names, fourth]] == [True, False, True, True]
    assert [path.stem for path in _spill_files(tmp_path)] == [names[1]]

    back = store.get(names[1])  # read back; the least recently used (names[2]) goes

    assert torch.equal(back.parts["latents"], _latents(1)["latents"])
    assert store.is_resident(names[1])
    assert not store.is_resident(names[2])
    assert store.resident_bytes <= store.budget_bytes
    assert store.delete(names[2]) == LATENTS_BYTES
    assert names[2] not in {path.stem for path in _spill_files(tmp_path)}


def test_pinned_tensors_stay_in_memory_and_cannot_be_deleted(store: TensorStore) -> None:
    names = [
        store.put(_latents(i), kind=TensorKind.LATENTS, generation_id=f"g{i}").name
        for i in range(3)
    ]
    store.pin([names[0]])
    store.put(_latents(3), kind=TensorKind.LATENTS, generation_id="g3")

    assert store.is_resident(names[0])
    assert not store.is_resident(names[1])
    with pytest.raises(FailedPreconditionError) as raised:
        store.delete(names[0])
    assert raised.value.reason == "TENSOR_IN_USE"
    assert store.info(names[0]).name == names[0]

    store.unpin([names[0]])
    assert store.delete(names[0]) == LATENTS_BYTES


def test_pinning_an_unknown_name_pins_nothing(store: TensorStore) -> None:
    name = store.put(_latents(0), kind=TensorKind.LATENTS, generation_id="g").name
    with pytest.raises(NotFoundError):
        store.pin([name, "unknown"])
    assert store.delete(name) == LATENTS_BYTES


def test_a_tensor_larger_than_the_whole_budget_is_refused(store: TensorStore) -> None:
    with pytest.raises(ResourceExhaustedError) as raised:
        store.put({"latents": torch.zeros(1, 4, 32, 32)}, kind=TensorKind.NOISE, generation_id="g")
    assert raised.value.reason == "TENSOR_TOO_LARGE"
    assert store.list() == []
    assert store.resident_bytes == 0


def test_start_up_deletes_what_a_gone_process_spilled_and_spares_a_live_one(
    tmp_path: Path,
) -> None:
    live = TensorStore(tmp_path, budget_bytes=LATENTS_BYTES)
    for i in range(2):
        live.put(_latents(i), kind=TensorKind.LATENTS, generation_id="g")
    live_files = _spill_files(tmp_path)
    assert len(live_files) == 1
    # What a process that died left: its folder, its (now free) lock, a spilled tensor.
    gone = tmp_path / SPILL_DIR / "4242-deadbeef0000"
    gone.mkdir()
    (gone / ".lock").touch()
    (gone / "0b1e2f3a.safetensors").write_bytes(b"stale")

    second = TensorStore(tmp_path, budget_bytes=LATENTS_BYTES)

    assert not gone.exists()
    assert _spill_files(tmp_path) == live_files  # the live store's spill survives
    second.close()
    live.close()
    assert list((tmp_path / SPILL_DIR).iterdir()) == []


def test_a_crashed_process_leaves_its_lock_free(tmp_path: Path) -> None:
    """The folder of a process killed without closing is deleted at the next start."""
    pid = os.fork()
    if pid == 0:  # the child: spill, then die without closing
        store = TensorStore(tmp_path, budget_bytes=LATENTS_BYTES)
        for i in range(2):
            store.put(_latents(i), kind=TensorKind.LATENTS, generation_id="g")
        os._exit(0)
    os.waitpid(pid, 0)
    assert len(_spill_files(tmp_path)) == 1
    folder = _spill_files(tmp_path)[0].parent
    with (folder / ".lock").open() as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: its holder is gone

    TensorStore(tmp_path, budget_bytes=LATENTS_BYTES).close()

    assert not folder.exists()


def test_budget_default_is_a_documented_setting() -> None:
    from services.inference.settings import InferenceSettings

    settings = InferenceSettings(root=Path("/tmp/unused"))
    assert settings.tensor_store_bytes == 1024 * 1024 * KIB
