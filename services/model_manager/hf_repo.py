"""HuggingFace repositories: what a model's repo says about it, and which of its files
make up the model in the variant asked for.

Metadata and the file tree come through `huggingface_hub` (pointed at the configured
endpoint explicitly: the library reads HF_ENDPOINT only at import). The files themselves
are fetched by the downloader at `<endpoint>/<repo>/resolve/<commit>/<path>`, pinned to
the commit that was inspected, so the files always match the selection.

File choice follows `reference/model-facts.md`: a pipeline repo's `model_index.json`
names the folders to take; each folder keeps its configs and tokenizer files and one set
of weights: safetensors over `.bin`, the `fp16`-labelled files for the fp16 variant when
the folder has them and the unlabelled ones otherwise (so a missing variant falls back to
the default), every shard of a sharded weight; onnx, openvino, flax and (non_)ema
alternates are skipped unless asked for. A variant kept on a branch of its own name is
used when the branch exists.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from huggingface_hub import HfApi
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import ModelInfo, RepoFile
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from services.common import errors
from services.model_manager.taxonomy import ModelRepoVariant

WEIGHT_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".pb", ".h5", ".gguf"}
)
_LABELLED = re.compile(r"^(?P<stem>.+?)\.(?P<label>fp16|fp32|bf16)(?P<rest>(-\d+-of-\d+)?\.\w+)$")
_EXPORT_FOLDERS = {ModelRepoVariant.ONNX: "onnx", ModelRepoVariant.OPENVINO: "openvino"}


@dataclass(frozen=True)
class RepoInfo:
    """A repository's description at one commit, and the hub's response, for the record."""

    repo_id: str
    sha: str
    tags: list[str]
    api_response: str


@dataclass(frozen=True)
class SelectedFile:
    """A file to download: its URL at the inspected commit, size and path in the model."""

    url: str
    size: int
    local_path: str


@dataclass(frozen=True)
class RepoSelection:
    """The files of a model inside a repo; `model_dir_name` names the installed folder
    (or the file, when `is_folder` is False)."""

    files: list[SelectedFile]
    model_dir_name: str
    is_folder: bool


class HuggingFaceRepo:
    """Reads repositories of one hub (the blocking library calls run in worker threads)."""

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._api = HfApi(endpoint=self._endpoint)

    async def fetch_metadata(self, repo_id: str, token: str | None) -> RepoInfo:
        info = await asyncio.to_thread(self._info, repo_id, None, token)
        return _repo_info(info)

    async def select_files(
        self,
        repo_id: str,
        variant: ModelRepoVariant | None,
        subfolder: str | None,
        token: str | None,
    ) -> RepoSelection:
        return await asyncio.to_thread(self._select, repo_id, variant, subfolder, token)

    def _select(
        self,
        repo_id: str,
        variant: ModelRepoVariant | None,
        subfolder: str | None,
        token: str | None,
    ) -> RepoSelection:
        info = self._variant_revision(repo_id, variant, token)
        assert info.sha is not None
        tree = {
            entry.path: entry.size
            for entry in self._call(
                repo_id,
                lambda: list(
                    self._api.list_repo_tree(
                        repo_id, recursive=True, revision=info.sha, token=token
                    )
                ),
            )
            if isinstance(entry, RepoFile)
        }
        repo_name = repo_id.rpartition("/")[2]
        subfolder = (subfolder or "").strip("/")
        single_file = bool(subfolder) and subfolder in tree
        if single_file:
            chosen, name, prefix = [subfolder], PurePosixPath(subfolder).name, ""
        elif subfolder:
            prefix = subfolder + "/"
            inside = [path for path in tree if path.startswith(prefix)]
            if not inside:
                raise _not_found(repo_id, f"{repo_id} has no file or folder {subfolder!r}")
            chosen = choose_files(inside, variant, prefix=prefix)
            name = f"{repo_name}-{PurePosixPath(subfolder).name}"
        else:
            components = None
            if "model_index.json" in tree:
                components = self._pipeline_components(repo_id, info.sha, token)
            chosen = choose_files(list(tree), variant, components=components)
            name, prefix = repo_name, ""
        files = [
            SelectedFile(
                url=self._file_url(repo_id, info.sha, path),
                size=tree[path] or 0,
                local_path=PurePosixPath(path).name if single_file else path.removeprefix(prefix),
            )
            for path in chosen
        ]
        return RepoSelection(files, name, is_folder=not single_file)

    def _file_url(self, repo_id: str, sha: str, path: str) -> str:
        return f"{self._endpoint}/{repo_id}/resolve/{sha}/{quote(path)}"

    def _variant_revision(
        self, repo_id: str, variant: ModelRepoVariant | None, token: str | None
    ) -> ModelInfo:
        """The repo at the variant's own branch when it has one, else at `main`."""
        if variant is not None and variant is not ModelRepoVariant.DEFAULT:
            try:
                return self._api.model_info(repo_id, revision=variant.value, token=token)
            except RevisionNotFoundError:
                pass
            except (RepositoryNotFoundError, HfHubHTTPError):
                pass  # reported by the main revision's lookup below, with the right reason
        return self._info(repo_id, None, token)

    def _info(self, repo_id: str, revision: str | None, token: str | None) -> ModelInfo:
        return self._call(
            repo_id, lambda: self._api.model_info(repo_id, revision=revision, token=token)
        )

    def _pipeline_components(self, repo_id: str, sha: str, token: str | None) -> set[str]:
        """The folders a pipeline's model_index.json names (its non-null components)."""
        url = self._file_url(repo_id, sha, "model_index.json")

        def fetch() -> dict[str, Any]:
            response = get_session().get(url, headers=build_hf_headers(token=token))
            hf_raise_for_status(response)
            return response.json()

        index = self._call(repo_id, fetch)
        return {
            key
            for key, value in index.items()
            if not key.startswith("_") and isinstance(value, list) and value[0] is not None
        }

    def _call(self, repo_id: str, action):
        try:
            return action()
        except GatedRepoError:
            raise errors.PermissionDeniedError(
                f"HTTP 401: {repo_id} is gated or private; give an access token that may read it",
                reason="REMOTE_ACCESS_DENIED",
                metadata={"source": repo_id, "http_status": "401"},
            ) from None
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
            raise _not_found(repo_id, f"HTTP 404: {repo_id} does not exist on the hub") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise errors.PermissionDeniedError(
                    f"HTTP {status}: access to {repo_id} was refused",
                    reason="REMOTE_ACCESS_DENIED",
                    metadata={"source": repo_id, "http_status": str(status)},
                ) from None
            raise errors.UnavailableError(
                f"HTTP {status}: the hub failed on {repo_id}",
                reason="DOWNLOAD_FAILED",
                metadata={"source": repo_id, "http_status": str(status)},
            ) from None
        except OSError as exc:
            raise errors.UnavailableError(
                f"the hub at {self._endpoint} cannot be reached: {exc}",
                reason="DOWNLOAD_FAILED",
                metadata={"source": repo_id},
            ) from None


def choose_files(
    paths: list[str],
    variant: ModelRepoVariant | None,
    *,
    components: set[str] | None = None,
    prefix: str = "",
) -> list[str]:
    """The paths of a model's files among a repo's `paths` (see the module doc)."""
    by_folder: dict[str, list[PurePosixPath]] = defaultdict(list)
    for path in paths:
        relative = PurePosixPath(path.removeprefix(prefix))
        top = relative.parts[0] if len(relative.parts) > 1 else ""
        if components is not None and top and top not in components:
            continue
        if _skipped(relative, variant):
            continue
        by_folder[str(relative.parent)].append(relative)
    chosen: list[str] = []
    for folder, files in by_folder.items():
        configs = [f for f in files if f.suffix not in WEIGHT_SUFFIXES]
        chosen += [prefix + str(f) for f in configs]
        if components is None or folder != ".":  # a pipeline's top level: configs only
            chosen += [prefix + str(f) for f in _weights(files, variant)]
    return sorted(chosen)


def _skipped(path: PurePosixPath, variant: ModelRepoVariant | None) -> bool:
    exports = {folder for v, folder in _EXPORT_FOLDERS.items() if v is not variant}
    if any(part in exports for part in path.parts[:-1]):
        return True
    if path.suffix == ".msgpack" and variant is not ModelRepoVariant.FLAX:
        return True
    if path.suffix == ".onnx" and variant is not ModelRepoVariant.ONNX:
        return True
    name = path.name
    return "non_ema" in name or ".ema." in name or name.startswith("ema.")


def _weights(files: list[PurePosixPath], variant: ModelRepoVariant | None) -> list[PurePosixPath]:
    weights = [f for f in files if f.suffix in WEIGHT_SUFFIXES]
    export_suffix = {ModelRepoVariant.FLAX: ".msgpack", ModelRepoVariant.ONNX: ".onnx"}
    if variant in export_suffix:
        exported = [f for f in weights if f.suffix == export_suffix[variant]]
        weights = exported or weights
    if any(f.suffix == ".safetensors" for f in weights):
        weights = [f for f in weights if f.suffix == ".safetensors"]
    wanted = variant.value if variant in (ModelRepoVariant.FP16, ModelRepoVariant.FP32) else None
    labelled = [f for f in weights if _label(f) == wanted] if wanted else []
    return labelled or [f for f in weights if _label(f) is None]


def _label(path: PurePosixPath) -> str | None:
    match = _LABELLED.match(path.name)
    return match["label"] if match else None


def _not_found(repo_id: str, message: str) -> errors.NotFoundError:
    return errors.NotFoundError(
        message, reason="REMOTE_NOT_FOUND", metadata={"source": repo_id, "http_status": "404"}
    )


def _repo_info(info: ModelInfo) -> RepoInfo:
    response = {
        "id": info.id,
        "author": info.author,
        "sha": info.sha,
        "lastModified": info.last_modified.isoformat() if info.last_modified else None,
        "tags": list(info.tags or []),
        "siblings": [{"rfilename": s.rfilename} for s in info.siblings or []],
        "cardData": dict(info.card_data or {}),
    }
    return RepoInfo(info.id, info.sha or "", list(info.tags or []), json.dumps(response))
