"""Model files in and out of `models_dir`: where they go, how they move, how they go away.

A move is a rename where the filesystem allows. Across filesystems it copies and removes
one file at a time, so an install never needs twice the model's size on disk.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from services.common.errors import AlreadyExistsError
from services.common.model_taxonomy import BaseModelType, ModelType


def install_destination(models_dir: Path, base: BaseModelType, type: ModelType, name: str) -> Path:
    """`<models_dir>/<base>/<type>/<name>`, refused when something is there already."""
    destination = models_dir / base.value / type.value / name
    if destination.exists():
        raise AlreadyExistsError(
            f"{destination} already exists",
            reason="MODEL_FILE_EXISTS",
            metadata={"path": str(destination)},
        )
    return destination


def move_model(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, destination)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    if source.is_file():
        shutil.copy2(source, destination)
        source.unlink()
        return
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        target = destination / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)
        file.unlink()
    shutil.rmtree(source)


def copy_model(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, destination)
    else:
        shutil.copy2(source, destination)


def delete_model_files(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def record_path(path: Path, models_dir: Path) -> str:
    """How a record names `path`: relative to `models_dir` when inside it, else absolute."""
    return str(path.relative_to(models_dir)) if path.is_relative_to(models_dir) else str(path)


def on_disk(record_path: str, models_dir: Path) -> Path:
    """The absolute path a record's `path` stands for."""
    path = Path(record_path)
    return path if path.is_absolute() else models_dir / path


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
