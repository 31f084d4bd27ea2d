"""A stand-in for the HuggingFace Hub on loopback, enough for `huggingface_hub` (pointed at
it with HF_ENDPOINT) and for Easel's installer.

Repositories are folders: `<root>/<owner>/<name>/` is the `main` revision and
`<root>/<owner>/<name>@<branch>/` another branch (e.g. `@fp16`). A repo whose folder holds
a `.gated` file answers 401 unless the request carries `Authorization: Bearer <its
content>`; a `.tags` file lists its tags, one a line. It serves:

- `GET /api/models/{repo}` and `/api/models/{repo}/revision/{rev}`: model info
  (id, sha, siblings, tags, author, lastModified, gated)
- `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=true`: the file tree
- `HEAD`/`GET /{repo}/resolve/{rev}/{path}`: the file, with ETag, X-Repo-Commit and
  Range support (sendfile from disk)

Run as a process for benchmarks: `python -m tests.hf_hub --root DIR --port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

LAST_MODIFIED = "2026-11-02T10:00:00.000Z"
HIDDEN = (".gated", ".tags")


@dataclass(frozen=True)
class Revision:
    repo_id: str
    folder: Path

    @property
    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file() and p.name not in HIDDEN)

    @property
    def sha(self) -> str:
        listing = "\n".join(
            f"{p.relative_to(self.folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in self.files
        )
        return hashlib.sha1(f"{self.repo_id}\n{listing}".encode()).hexdigest()

    def etag(self, path: Path) -> str:
        stat = path.stat()
        return hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()


class HubStandIn:
    """The server; repos are read from `root` on every request, so tests may add them."""

    def __init__(self, root: Path, host: str = "127.0.0.1") -> None:
        self.root = root
        self.host = host
        self.port = 0
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, port: int = 0) -> None:
        app = web.Application(middlewares=[self._record])
        app.add_routes(
            [
                web.get("/api/models/{owner}/{name}", self._info),
                web.get("/api/models/{owner}/{name}/revision/{rev}", self._info),
                web.get("/api/models/{owner}/{name}/tree/{rev}", self._tree),
                web.get("/api/models/{owner}/{name}/tree/{rev}/{path:.*}", self._tree),
                web.get("/{owner}/{name}/resolve/{rev}/{path:.*}", self._resolve),
            ]
        )
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler):
        self.requests.append(f"{request.method} {request.path_qs}")
        return await handler(request)

    def _revision(self, request: web.Request) -> Revision:
        owner, name = request.match_info["owner"], request.match_info["name"]
        rev = request.match_info.get("rev", "main")
        repo_folder = self.root / owner / name
        if not repo_folder.is_dir():
            raise _hub_error(404, "RepoNotFound", f"Repository {owner}/{name} not found")
        gate = repo_folder / ".gated"
        if gate.exists():
            token = gate.read_text().strip()
            if request.headers.get("Authorization") != f"Bearer {token}":
                raise _hub_error(401, "GatedRepo", f"Access to model {owner}/{name} is restricted.")
        branches = {"main": repo_folder} | {
            folder.name.partition("@")[2]: folder
            for folder in (self.root / owner).glob(f"{name}@*")
        }
        for branch, folder in branches.items():
            revision = Revision(f"{owner}/{name}", folder)
            if rev in (branch, revision.sha):
                return revision
        raise _hub_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    async def _info(self, request: web.Request) -> web.Response:
        revision = self._revision(request)
        repo_folder = self.root / revision.repo_id
        tags_file = repo_folder / ".tags"
        tags = tags_file.read_text().split() if tags_file.exists() else []
        return web.json_response(
            {
                "_id": revision.sha[:24],
                "id": revision.repo_id,
                "modelId": revision.repo_id,
                "author": revision.repo_id.split("/")[0],
                "sha": revision.sha,
                "lastModified": LAST_MODIFIED,
                "private": False,
                "disabled": False,
                "gated": "manual" if (repo_folder / ".gated").exists() else False,
                "tags": tags,
                "downloads": 0,
                "likes": 0,
                "library_name": "diffusers",
                "siblings": [
                    {"rfilename": str(p.relative_to(revision.folder))} for p in revision.files
                ],
            }
        )

    async def _tree(self, request: web.Request) -> web.Response:
        revision = self._revision(request)
        below = request.match_info.get("path", "").strip("/")
        recursive = request.query.get("recursive", "false").lower() == "true"
        base = revision.folder / below if below else revision.folder
        entries = []
        candidates = sorted(base.rglob("*") if recursive else base.glob("*"))
        for path in candidates:
            if path.name in HIDDEN:
                continue
            relative = str(path.relative_to(revision.folder))
            if path.is_dir():
                entries.append({"type": "directory", "oid": revision.sha, "path": relative})
            else:
                size = path.stat().st_size
                entry = {"type": "file", "oid": revision.etag(path)[:40], "size": size}
                entry["path"] = relative
                entry["lfs"] = {"oid": revision.etag(path), "size": size, "pointerSize": 134}
                entries.append(entry)
        return web.json_response(entries)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        revision = self._revision(request)
        path = (revision.folder / request.match_info["path"]).resolve()
        if not path.is_relative_to(revision.folder.resolve()) or not path.is_file():
            raise _hub_error(404, "EntryNotFound", f"{request.match_info['path']} does not exist")
        etag = f'"{revision.etag(path)}"'
        headers = {
            "ETag": etag,
            "X-Repo-Commit": revision.sha,
            "X-Linked-Etag": etag,
            "X-Linked-Size": str(path.stat().st_size),
            "Accept-Ranges": "bytes",
        }
        if request.method == "HEAD":
            headers["Content-Length"] = str(path.stat().st_size)
            return web.Response(headers=headers)
        response = web.FileResponse(path, headers=headers)
        return response


def _hub_error(status: int, code: str, message: str) -> web.HTTPException:
    error_class = {401: web.HTTPUnauthorized, 404: web.HTTPNotFound}[status]
    return error_class(
        text=f'{{"error": "{message}"}}',
        content_type="application/json",
        headers={"X-Error-Code": code, "X-Error-Message": message},
    )


async def _serve(root: Path, port: int) -> None:
    hub = HubStandIn(root)
    await hub.start(port)
    print(f"serving {root} at {hub.endpoint}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(_serve(args.root, args.port))


if __name__ == "__main__":
    main()
