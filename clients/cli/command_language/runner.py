"""Running lines of the language against the invoker: one session for a whole `easel gen`
(single line or interactive), nodes added with their links, each line run with progress
bars from the session's events, and the images it kept saved and shown.

A line is checked whole before its first node is added (see `plan`). Should the server
still refuse a node half way, the nodes added before it must not run with a later line:
the session is deleted when it held nothing else, or left for a fresh one otherwise.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from clients.cli.command_language.commands import REFERENCE_KEYS, Command, CommandSet
from clients.cli.command_language.help import command_help, language_help
from clients.cli.command_language.plan import History, PlannedNode, commit, plan_line
from clients.cli.command_language.preview import show
from clients.cli.command_language.syntax import LanguageError, parse_line, split_words
from clients.cli.errors import RunFailedError, reason_hint
from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import image_service_pb2 as image_pb
from easel.invoker.v1 import session_service_pb2 as session_pb
from easel.model_manager.v1 import model_record_service_pb2 as records_pb
from services.common.errors import EaselError, NotFoundError

SHOW_COMMAND = "show_image"
LANGUAGE_COMMANDS = ("help", "history", "exit", "quit")

_GEN_HINTS = {
    "MISSING_REQUIRED_INPUT": "Name a model with --model KEY, or install one: `easel demo "
    "install` for a small demo model, `easel models install SOURCE` for a real one.",
}


class GenSession:
    """Runs lines in one session of the invoker that `client` (an EaselClient) reaches."""

    def __init__(
        self,
        client: Any,
        commands: CommandSet,
        output_dir: Path,
        *,
        out: Console,
        err: Console,
        viewer: bool = True,
    ) -> None:
        self.client = client
        self.commands = commands
        self.output_dir = output_dir
        self.out = out
        self.err = err
        self.viewer = viewer
        self.history = History()
        self.session_id = ""

    def run_line(self, line: str) -> None:
        """Run one line: a language command (help, history) or node commands; a failed
        run raises RunFailedError once what succeeded is saved."""
        words = split_words(line)
        if words and not words[0].quoted and words[0].text in ("help", "history"):
            self._language_command(words[0].text, [word.text for word in words[1:]])
            return
        calls = parse_line(line)
        if not calls:
            return
        planned = plan_line(calls, self.commands, self.history)
        for node in planned:
            self._resolve_values(node)
        self._add(planned)
        outputs, failure = self._run(planned)
        commit(self.history, planned, set(outputs))
        self._save_images(planned, outputs)
        self._print_values(planned[-1], outputs)
        if failure is not None:
            raise failure

    # --- language commands ---------------------------------------------------------------

    def _language_command(self, name: str, args: list[str]) -> None:
        if name == "help":
            if len(args) > 1:
                raise LanguageError("help takes at most one command name")
            if not args or args[0] in LANGUAGE_COMMANDS:
                self.out.print(language_help(self.commands))
            else:
                self.out.print(command_help(self.commands.get(args[0])))
            return
        if args:
            raise LanguageError("history takes no arguments")
        if not self.history.entries:
            self.out.print("no commands have run yet in this session")
            return
        count = len(self.history.entries)
        for back, (node_id, command) in enumerate(self.history.entries):
            self.out.print(f"@-{count - back}\t@{node_id}\t{command.name}", markup=False)

    # --- values the server needs as names ------------------------------------------------

    def _resolve_values(self, node: PlannedNode) -> None:
        """Local image files become uploaded images; model names become model keys."""
        for name, value in list(node.inputs.items()):
            option = node.command.options[name]
            element = option.type[5:-1] if option.type.startswith("list[") else option.type
            if element not in ("image", "model"):
                continue
            values = value if option.type.startswith("list[") else [value]
            resolved = [
                self._image(item) if element == "image" else self._model(item, node.command)
                for item in values
            ]
            node.inputs[name] = resolved if option.type.startswith("list[") else resolved[0]

    def _image(self, value: dict[str, str]) -> dict[str, str]:
        path = Path(value[REFERENCE_KEYS["image"]]).expanduser()
        if not path.is_file():
            return value
        with Image.open(path) as opened:
            png = _png_bytes(opened)
        record = self.client.upload_image(png, is_intermediate=True)
        self.err.print(f"uploaded {path} as image {record.name}", markup=False)
        return {REFERENCE_KEYS["image"]: record.name}

    def _model(self, value: dict[str, str], command: Command) -> dict[str, str]:
        """A key stays a key; otherwise the one model with that name."""
        key = value[REFERENCE_KEYS["model"]]
        exists = self.client.model_records.CheckModelExists(
            records_pb.CheckModelExistsRequest(key=key)
        ).exists
        if exists:
            return value
        found = self.client.model_records.ListModels(records_pb.ListModelsRequest(name=key)).models
        if len(found) == 1:
            return {REFERENCE_KEYS["model"]: found[0].key}
        if not found:
            raise NotFoundError(
                f"{command.name}: no model has the key or name {key!r}",
                reason="MODEL_NOT_FOUND",
                metadata={"key": key},
            )
        keys = ", ".join(model.key for model in found)
        raise LanguageError(f"{command.name}: several models are named {key!r}; use a key: {keys}")

    # --- the session -----------------------------------------------------------------------

    def _add(self, planned: list[PlannedNode]) -> None:
        if not self.session_id:
            self.session_id = self.client.sessions.CreateSession(
                session_pb.CreateSessionRequest()
            ).session.id
        for index, node in enumerate(planned):
            try:
                self.client.sessions.AddNode(_add_request(self.session_id, node))
            except EaselError:
                if index:
                    self._abandon_session()
                raise

    def _abandon_session(self) -> None:
        """Drop a session holding part of a refused line, so that part never runs."""
        if not self.history.entries:
            with contextlib.suppress(EaselError):
                self.client.sessions.DeleteSession(
                    session_pb.DeleteSessionRequest(session_id=self.session_id)
                )
        else:
            self.err.print(
                "the line was refused part way; the next line starts a new session "
                "(history references start again)"
            )
        self.session_id = ""
        self.history = History()

    def _run(
        self, planned: list[PlannedNode]
    ) -> tuple[dict[str, dict[str, Any]], RunFailedError | None]:
        """Run the session's ready nodes; returns each run's outputs by run id, and the
        run's failure, if any."""
        names = {node.node_id: node.command.name for node in planned}
        outputs: dict[str, dict[str, Any]] = {}
        failure: RunFailedError | None = None
        with _progress(self.err) as progress:
            tasks: dict[str, Any] = {}
            try:
                for event in self.client.run_session(self.session_id):
                    kind = event.WhichOneof("payload")
                    run_id = event.node_id
                    label = f"{run_id} {names.get(run_id.split('#')[0], '')}".strip()
                    if kind == "invocation_started":
                        tasks[run_id] = progress.add_task(label, total=None)
                    elif kind == "invocation_progress" and run_id in tasks:
                        step = event.invocation_progress
                        progress.update(tasks[run_id], completed=step.step, total=step.total_steps)
                    elif kind == "invocation_complete":
                        outputs[run_id] = json_format.MessageToDict(
                            event.invocation_complete.outputs
                        )
                        if run_id in tasks:
                            task = progress.tasks[tasks[run_id]]
                            total = task.total or 1
                            progress.update(tasks[run_id], completed=total, total=total)
                    elif kind == "invocation_error":
                        error = event.invocation_error
                        progress.console.print(
                            f"[red]✗[/red] {label}: {error.error} ({error.error_type})",
                            highlight=False,
                        )
                    elif kind == "session_error":
                        error = event.session_error
                        failure = RunFailedError(
                            f"the run failed: {error.error} ({error.error_type})",
                            hint=_GEN_HINTS.get(error.error_type)
                            or reason_hint(error.error_type, {}),
                        )
                    elif kind == "session_cancelled":
                        failure = RunFailedError("the run was cancelled")
            except KeyboardInterrupt:
                with contextlib.suppress(EaselError):
                    self.client.sessions.CancelSession(
                        session_pb.CancelSessionRequest(session_id=self.session_id)
                    )
                raise
        return outputs, failure

    # --- images ------------------------------------------------------------------------------

    def _save_images(self, planned: list[PlannedNode], outputs: dict[str, dict[str, Any]]) -> None:
        """Save the images the line's nodes kept for the user (save_image, show_image), or
        else the image of its last command; show show_image's images."""
        by_id = {node.node_id: node for node in planned}
        kept: list[tuple[str, PlannedNode, str]] = []
        last: list[tuple[str, PlannedNode, str]] = []
        for run_id, values in outputs.items():
            node = by_id.get(run_id.split("#")[0])
            if node is None:
                continue
            for name in _image_names(node.command, values):
                record = self.client.images.GetImage(image_pb.GetImageRequest(name=name)).image
                if not record.is_intermediate:
                    kept.append((run_id, node, name))
                elif node is planned[-1]:
                    last.append((run_id, node, name))
        for run_id, node, name in kept or last:
            path = self._download(
                name, f"{self.session_id[:8]}-{run_id.replace('#', '-')}-{node.command.name}.png"
            )
            self.out.print(f"saved {path}", markup=False, soft_wrap=True)
            if node.command.name == SHOW_COMMAND:
                show(path, self.out, viewer=self.viewer)

    def _print_values(self, node: PlannedNode, outputs: dict[str, dict[str, Any]]) -> None:
        """The last command's outputs other than images (a sum, a text), one line per run."""
        shown = [name for name, kind in node.command.outputs.items() if "image" not in kind]
        for run_id, values in outputs.items():
            if run_id.split("#")[0] == node.node_id and shown:
                pairs = ", ".join(
                    f"{name}={json.dumps(_typed(values.get(name), node.command.outputs[name]))}"
                    for name in shown
                )
                self.out.print(f"{run_id} {node.command.name}: {pairs}", markup=False)

    def _download(self, image_name: str, file_name: str) -> Path:
        stream = self.client.images.GetImageContent(
            image_pb.GetImageContentRequest(name=image_name)
        )
        data = b"".join(part.chunk for part in stream)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        target = self.output_dir / file_name
        part = target.with_name(f".{file_name}.{os.getpid()}.part")
        try:
            part.write_bytes(data)
            part.replace(target)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return target.resolve()


def _add_request(session_id: str, node: PlannedNode) -> session_pb.AddNodeRequest:
    message = graph_pb2.Node(id=node.node_id, type=node.command.name)
    message.inputs.update(node.inputs)
    links = [
        graph_pb2.Edge(
            source=graph_pb2.EdgeConnection(node_id=link.source_node, field=link.source_field),
            destination=graph_pb2.EdgeConnection(
                node_id=node.node_id, field=link.destination_field
            ),
        )
        for link in node.links
    ]
    return session_pb.AddNodeRequest(session_id=session_id, node=message, links=links)


def _image_names(command: Command, values: dict[str, Any]) -> Iterator[str]:
    for name, kind in command.outputs.items():
        value = values.get(name)
        if kind == "image" and isinstance(value, dict):
            yield value[REFERENCE_KEYS["image"]]
        elif kind == "list[image]" and isinstance(value, list):
            yield from (item[REFERENCE_KEYS["image"]] for item in value)


def _typed(value: Any, type_name: str) -> Any:
    """A JSON value as its type has it: Struct numbers arrive as floats, integers are not."""
    if type_name == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if type_name == "list[integer]" and isinstance(value, list):
        return [_typed(item, "integer") for item in value]
    return value


def _png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _progress(console: Console) -> Progress:
    """A bar per node run on stderr: steps done of all (denoising nodes), time taken."""
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
