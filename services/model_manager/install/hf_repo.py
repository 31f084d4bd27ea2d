"""HuggingFace repositories: what a repo says about its model, and which of its files make
up the model in the variant asked for.

Everything goes through `huggingface_hub`, pointed at the configured endpoint explicitly
(the library reads HF_ENDPOINT once, at import) and given only the caller's token, never
one saved on this machine: a server must not lend its operator's credentials to remote
callers. The library is synchronous, so each lookup runs in a worker thread. The files
themselves are fetched by the downloader from `<endpoint>/<repo>/resolve/<commit>/<path>`,
pinned to the commit that was inspected, so what arrives is what was selected.

File choice follows `reference/model-facts.md` ("Choosing files from a HuggingFace
repository"); `choose_files` holds the rules.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.constants import HF_HUB_ETAG_TIMEOUT
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RevisionNotFoundError
from huggingface_hub.hf_api import RepoFolder
from huggingface_hub.utils import (
    build_hf_headers,
    get_session,
    hf_raise_for_status,
    validate_repo_id,
)

from services.common import errors
from services.common.model_taxonomy import ModelRepoVariant
from services.model_manager.install.downloader_client import RemoteFile
from services.model_manager.records.metadata import ModelMetadata, metadata_from_api_response

_LIBRARY = "easel"
_CONFIG_SUFFIXES = frozenset({".json", ".txt", ".model"})
# `<stem>[.<label>][-00001-of-00003].<ext>`, as diffusers and transformers name weights.
_WEIGHT = re.compile(
    r"^(?P<stem>.+?)(?:\.(?P<label>[A-Za-z_]\w*))?(?:-\d+-of-\d+)?"
    r"(?P<ext>\.(?:safetensors|bin|pt|pth|ckpt))$"
)
# A sharded weight's index: `<stem>.<ext>.index[.<label>].json`.
_SHARD_INDEX = re.compile(
    r"^(?P<stem>.+?)(?P<ext>\.(?:safetensors|bin))\.index(?:\.(?P<label>[A-Za-z_]\w*))?\.json$"
)
_ALTERNATES = frozenset({"ema", "non_ema"})
# The names diffusers and transformers load from a component folder.
_LIBRARY_WEIGHTS = frozenset({"diffusion_pytorch_model", "model", "pytorch_model"})
_LABELLED_VARIANTS = (ModelRepoVariant.FP16, ModelRepoVariant.FP32)


@dataclass(frozen=True)
class RepoMetadata(ModelMetadata):
    """A repo's metadata at its current commit, with the hub's model-info response verbatim
    (the record's `source_api_response`, which `metadata_from_api_response` reads back)."""

    sha: str = ""
    api_response: str = ""


@dataclass(frozen=True)
class RepoFile:
    """One file to download: its path in the repo, its path inside the installed model
    (relative to the model's folder, or the bare name for a single file), size and URL."""

    path: str
    local_path: str
    size: int
    url: str


@dataclass(frozen=True)
class RepoSelection:
    """The files of a model inside a repo at one commit.

    `revision` is the branch they come from (the variant's own, or `main`); the model is
    installed as a folder named `model_dir_name`, or as that single file when `is_folder`
    is False.
    """

    repo_id: str
    revision: str
    sha: str
    files: list[RepoFile]
    model_dir_name: str
    is_folder: bool

    def download_files(self) -> list[RemoteFile]:
        """The files as the downloader fetches them into `download_folder`."""
        return [RemoteFile(f.url, f.local_path, f.size) for f in self.files]

    def download_folder(self, into: Path) -> Path:
        """Where the files go when the model is to appear in `into`."""
        return into / self.model_dir_name if self.is_folder else into

    def model_path(self, into: Path) -> Path:
        """The model's folder or file once its files are in `download_folder(into)`."""
        return into / self.model_dir_name


class HuggingFaceRepo:
    """Reads the repositories of one hub."""

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._api = HfApi(endpoint=self._endpoint, library_name=_LIBRARY)

    async def fetch_metadata(self, repo_id: str, token: str | None) -> RepoMetadata:
        """The repo's name, author, tags, files and last commit, as of its default branch."""
        return await asyncio.to_thread(self._metadata, repo_id, token or False)

    async def select_files(
        self,
        repo_id: str,
        variant: ModelRepoVariant | None,
        subfolder: str | None,
        token: str | None,
    ) -> RepoSelection:
        """The files a model needs: the whole repo's, a folder's (`vae`) or one file's
        (`path/to/model.safetensors`), in `variant` (None means DEFAULT)."""
        wanted = variant or ModelRepoVariant.DEFAULT
        narrowed = (subfolder or "").strip("/")
        return await asyncio.to_thread(self._select, repo_id, wanted, narrowed, token or False)

    def _metadata(self, repo_id: str, token: str | bool) -> RepoMetadata:
        """Read with the library's session rather than `HfApi.model_info`, which keeps only
        the fields it knows: the record stores what the hub said, all of it."""
        with _hub_errors(repo_id, self._endpoint):
            validate_repo_id(repo_id)
            response = self._get(f"{self._endpoint}/api/models/{repo_id}", token)
            info = response.json()
        fields = vars(metadata_from_api_response(info))
        return RepoMetadata(**fields, sha=str(info.get("sha") or ""), api_response=response.text)

    def _select(
        self, repo_id: str, variant: ModelRepoVariant, subfolder: str, token: str | bool
    ) -> RepoSelection:
        with _hub_errors(repo_id, self._endpoint):
            revision, sha = self._revision(repo_id, variant, token)
            # The library gives the tree listing no timeout; it follows a model-info call
            # that had one, on the same host.
            tree = self._api.list_repo_tree(repo_id, revision=sha, recursive=True, token=token)
            sizes = {entry.path: entry.size for entry in tree if not isinstance(entry, RepoFolder)}
            if subfolder in sizes:
                chosen = [subfolder]
            else:
                chosen = self._choose(repo_id, sha, sizes, variant, subfolder, token)
        repo_name = repo_id.rpartition("/")[2]
        is_folder = subfolder not in sizes
        if not is_folder:
            name = PurePosixPath(subfolder).name
        elif subfolder:  # keeps the repo's name: two repos' `vae` folders install side by side
            name = f"{repo_name}-{PurePosixPath(subfolder).name}"
        else:
            name = repo_name
        prefix = f"{subfolder}/" if subfolder else ""
        files = [
            RepoFile(
                path=path,
                local_path=path.removeprefix(prefix) if is_folder else name,
                size=sizes[path] or 0,
                url=self._file_url(repo_id, sha, path),
            )
            for path in chosen
        ]
        return RepoSelection(repo_id, revision, sha, files, name, is_folder)

    def _choose(
        self,
        repo_id: str,
        sha: str,
        sizes: dict[str, int | None],
        variant: ModelRepoVariant,
        subfolder: str,
        token: str | bool,
    ) -> list[str]:
        prefix = f"{subfolder}/" if subfolder else ""
        inside = [path for path in sizes if path.startswith(prefix)]
        if not inside:
            raise _not_found(repo_id, f"{repo_id} has no file or folder {subfolder!r}")
        components = None
        if f"{prefix}model_index.json" in sizes:
            components = self._components(repo_id, sha, f"{prefix}model_index.json", token)
        chosen = choose_files(inside, variant, components=components, prefix=prefix)
        if not chosen:
            raise _not_found(repo_id, f"{repo_id} has no model files in {subfolder or '/'!r}")
        return chosen

    def _revision(
        self, repo_id: str, variant: ModelRepoVariant, token: str | bool
    ) -> tuple[str, str]:
        """The branch to take files from and its commit: the one named after the variant
        when the repo has it, else `main` (the reference's fallback)."""
        if variant is not ModelRepoVariant.DEFAULT:
            try:
                return variant.value, self._commit(repo_id, variant.value, token)
            except RevisionNotFoundError:
                pass
        return "main", self._commit(repo_id, "main", token)

    def _commit(self, repo_id: str, branch: str, token: str | bool) -> str:
        info = self._api.model_info(
            repo_id, revision=branch, token=token, timeout=HF_HUB_ETAG_TIMEOUT
        )
        return str(info.sha)

    def _components(self, repo_id: str, sha: str, index_path: str, token: str | bool) -> set[str]:
        """The folders a pipeline's `model_index.json` names (its components that exist:
        `[library, class]` pairs; `[null, null]` marks one left out)."""
        index: dict[str, Any] = self._get(self._file_url(repo_id, sha, index_path), token).json()
        return {key for key, value in index.items() if isinstance(value, list) and any(value)}

    def _file_url(self, repo_id: str, sha: str, path: str) -> str:
        """A file at one commit. Built here: `hf_hub_url` swaps in an endpoint only when
        its URL starts with the HF_ENDPOINT seen at import."""
        return f"{self._endpoint}/{repo_id}/resolve/{sha}/{quote(path)}"

    def _get(self, url: str, token: str | bool) -> httpx2.Response:
        headers = build_hf_headers(token=token, library_name=_LIBRARY)
        response = get_session().get(url, headers=headers, timeout=HF_HUB_ETAG_TIMEOUT)
        hf_raise_for_status(response)
        return response


def choose_files(
    paths: Iterable[str],
    variant: ModelRepoVariant | None,
    *,
    components: set[str] | None = None,
    prefix: str = "",
) -> list[str]:
    """The files of the model rooted at `prefix` among a repo's `paths`, sorted.

    A pipeline (its `components` given, from `model_index.json`) takes only the folders it
    names plus its top-level configs; any other root takes every folder below it. Each
    folder keeps its config and tokenizer files (`*.json`, `*.txt`, `*.model`) and one set
    of weights (`_best_weights`). onnx, openvino and flax files are skipped unless they are
    the variant asked for, and a folder without them falls back to its default weights.
    """
    variant = variant or ModelRepoVariant.DEFAULT
    folders: dict[PurePosixPath, list[PurePosixPath]] = defaultdict(list)
    for path in paths:
        relative = PurePosixPath(path.removeprefix(prefix))
        top_level = len(relative.parts) == 1
        if components is not None and not top_level and relative.parts[0] not in components:
            continue
        if _export(relative) not in (None, variant):
            continue
        folders[relative.parent].append(relative)
    chosen: list[PurePosixPath] = []
    for folder, files in folders.items():
        chosen += [f for f in files if _is_config(f)]
        if components is not None and folder == PurePosixPath("."):
            continue  # a pipeline's top level: configs only, no stray checkpoints
        exported = [f for f in files if _export(f) is variant and not _is_config(f)]
        chosen += exported or _best_weights(files, variant)
    return sorted(prefix + path.as_posix() for path in chosen)


def _best_weights(files: list[PurePosixPath], variant: ModelRepoVariant) -> list[PurePosixPath]:
    """A folder's torch weights in one form: every shard of it and its index.

    Ranked by: the label asked for (`fp16`, `fp32`), then unlabelled, then any other label
    (a folder kept only in fp16 still yields its weights); safetensors over the rest; the
    name diffusers or transformers loads. `ema`/`non_ema` alternates never count.
    """
    sets: dict[tuple[str, str | None, str], list[PurePosixPath]] = defaultdict(list)
    for file in files:
        match = _WEIGHT.match(file.name) or _SHARD_INDEX.match(file.name)
        if match and _export(file) is None and match["label"] not in _ALTERNATES:
            sets[(match["stem"], match["label"], match["ext"])].append(file)
    if not sets:
        return []
    wanted = variant.value if variant in _LABELLED_VARIANTS else None

    def rank(key: tuple[str, str | None, str]) -> tuple[bool, bool, bool, bool]:
        stem, label, ext = key
        return (label == wanted, label is None, ext == ".safetensors", stem in _LIBRARY_WEIGHTS)

    return sets[max(sorted(sets, key=str), key=rank)]


def _is_config(path: PurePosixPath) -> bool:
    return path.suffix in _CONFIG_SUFFIXES and not _SHARD_INDEX.match(path.name)


def _export(path: PurePosixPath) -> ModelRepoVariant | None:
    """The export format a file belongs to, if any (None: a torch weight or a config)."""
    if "onnx" in path.parts[:-1] or path.suffix in (".onnx", ".onnx_data", ".pb"):
        return ModelRepoVariant.ONNX
    if any("openvino" in part for part in path.parts):
        return ModelRepoVariant.OPENVINO
    if path.suffix == ".msgpack":
        return ModelRepoVariant.FLAX
    return None


@contextmanager
def _hub_errors(repo_id: str, endpoint: str) -> Iterator[None]:
    """Turns the library's errors into domain errors with the install API's reasons.

    The status decides, not the library's exception class: the real hub answers 401 both
    for a gated or private repo and for one that does not exist (it does not tell them
    apart for a caller without access), and that is what the caller learns.
    """
    try:
        yield
    except HfHubHTTPError as exc:
        status = exc.response.status_code
        detail = f"HTTP {status} from the hub for {repo_id}"
        if exc.server_message:
            detail += f": {exc.server_message.strip()}"
        metadata = {"source": repo_id, "http_status": str(status)}
        if status in (401, 403):
            raise errors.PermissionDeniedError(
                f"{detail} (a gated or private repo needs an access token that may read it)",
                reason="REMOTE_ACCESS_DENIED",
                metadata=metadata,
            ) from None
        if status == 404:
            raise errors.NotFoundError(
                detail, reason="REMOTE_NOT_FOUND", metadata=metadata
            ) from None
        raise errors.UnavailableError(detail, reason="DOWNLOAD_FAILED", metadata=metadata) from None
    except HFValidationError as exc:
        raise errors.InvalidArgumentError(
            f"invalid repo id {repo_id!r}: {exc}",
            reason="INVALID_SOURCE",
            metadata={"source": repo_id},
        ) from None
    except (httpx2.TransportError, OSError) as exc:
        raise errors.UnavailableError(
            f"the hub at {endpoint} cannot be reached: {type(exc).__name__}: {exc}",
            reason="DOWNLOAD_FAILED",
            metadata={"source": repo_id},
        ) from None


def _not_found(repo_id: str, message: str) -> errors.NotFoundError:
    return errors.NotFoundError(
        message, reason="REMOTE_NOT_FOUND", metadata={"source": repo_id, "http_status": "404"}
    )
