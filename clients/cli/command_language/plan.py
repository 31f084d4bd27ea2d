"""From parsed commands to the nodes and links that SessionService.AddNode takes.

A command piped from another (`a | b`) takes every
output of the previous one whose name and type match one of its inputs (a `*` link).
The first command of a line does the same from the last command that ran before it, so
`upscale` typed after a `txt2img` line upscales that image. A link that names a field
wins over a `*` link. History references name earlier commands:

- `--field @-N` or `--field @-N.output`: the N-th command before this one (`@-1` the
  previous one), counting back through this line, then the commands of earlier lines
  that ran successfully;
- `--field @ID` or `--field @ID.output`: the node with that id (`history` lists them);
- `--link FIELD NODE OUTPUT` (`-l`) and `--link_node NODE` (`-ln`), the long forms,
  where NODE is an id or a history index `-N`.

Without `.output`, the output of the input's own name is taken, else the only output of
the input's type. Everything is checked here, before the first node is added, so a bad
line leaves the session as it was.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clients.cli.command_language.commands import (
    NO_DEFAULT,
    Command,
    CommandSet,
    Option,
    convert_value,
)
from clients.cli.command_language.syntax import CommandCall, LanguageError, OptionCall

STAR = "*"
_REFERENCE = re.compile(r"@(?P<node>-?[A-Za-z0-9_.-]+?)(?:\.(?P<field>[A-Za-z_][A-Za-z0-9_]*))?")
_HISTORY_INDEX = re.compile(r"-(?P<back>[1-9][0-9]*)")


@dataclass(frozen=True)
class Link:
    """An edge into the new node: from `source_node`'s output `source_field` (or every
    matching output, `*`) into `destination_field` (`*` with a `*` source)."""

    source_node: str
    source_field: str
    destination_field: str


@dataclass
class PlannedNode:
    """One node to add: its id, its type (command), its direct inputs and its links."""

    node_id: str
    command: Command
    inputs: dict[str, Any] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)


@dataclass
class History:
    """The nodes of a session in the order they were added, for history references; a node
    that failed or never ran is dropped once its line has ended."""

    entries: list[tuple[str, Command]] = field(default_factory=list)
    next_number: int = 1
    """The number of the next node: ids are 1, 2, 3, ... (short, so `@3` is easy to type)."""


def plan_line(
    calls: Sequence[CommandCall], commands: CommandSet, history: History
) -> list[PlannedNode]:
    """The nodes of a line, checked; `history` itself is left unchanged."""
    earlier = list(history.entries)
    known_ids = {node_id: command for node_id, command in earlier}
    planned: list[PlannedNode] = []
    next_number = history.next_number
    for call in calls:
        command = commands.get(call.name)
        node = PlannedNode(str(next_number), command)
        next_number += 1
        resolver = _Resolver(earlier, known_ids)
        for option_call in call.options:
            _apply_option(node, option_call, resolver)
        if earlier and Link(earlier[-1][0], STAR, STAR) not in node.links:
            node.links.append(Link(earlier[-1][0], STAR, STAR))
        star_sources = [
            known_ids[link.source_node] for link in node.links if link.source_field == STAR
        ]
        _check_required(node, star_sources)
        planned.append(node)
        earlier.append((node.node_id, command))
        known_ids[node.node_id] = command
    return planned


def commit(history: History, planned: Sequence[PlannedNode], succeeded: set[str]) -> None:
    """Record a line's nodes in `history` once it has run: those that succeeded stay
    referable, and node ids are never reused."""
    history.entries += [
        (node.node_id, node.command) for node in planned if node.node_id in succeeded
    ]
    if planned:
        history.next_number = max(history.next_number, int(planned[-1].node_id) + 1)


@dataclass
class _Resolver:
    """Finds the node a history reference names, among the nodes before the command."""

    earlier: list[tuple[str, Command]]
    known_ids: dict[str, Command]

    def node(self, text: str, where: str, written: str = "") -> tuple[str, Command]:
        """The node `text` (an id, or -N) names; `written` is the reference as typed."""
        match = _HISTORY_INDEX.fullmatch(text)
        if match:
            back = int(match["back"])
            if back > len(self.earlier):
                count = len(self.earlier)
                raise LanguageError(
                    f"{where}: {written or text} goes back {back} commands, but only {count} "
                    "came before"
                )
            return self.earlier[-back]
        if text in self.known_ids:
            return text, self.known_ids[text]
        raise LanguageError(
            f"{where}: no node {text!r} (give a node id from `history`, or -N for the N-th "
            "command back)"
        )


def _apply_option(node: PlannedNode, call: OptionCall, resolver: _Resolver) -> None:
    command = node.command
    if call.name == "link":
        if len(call.values) != 3:
            raise LanguageError(
                f"{command.name} {call.spelled} takes three values: FIELD NODE OUTPUT "
                f"(e.g. `{call.spelled} image -1 image`)"
            )
        destination, source, source_field = call.values
        option = command.option(destination.replace("-", "_"), "--" + destination)
        where = f"{command.name} {call.spelled}"
        source_id, source_command = resolver.node(source, where)
        _add_link(node, option, source_id, source_command, source_field, where)
        return
    if call.name == "link_node":
        if len(call.values) != 1:
            raise LanguageError(f"{command.name} {call.spelled} takes one value: NODE")
        source_id, _ = resolver.node(call.values[0], f"{command.name} {call.spelled}")
        node.links.append(Link(source_id, STAR, STAR))
        return
    option = command.option(call.name, call.spelled)
    if option.name in node.inputs or any(
        link.destination_field == option.name for link in node.links
    ):
        raise LanguageError(f"{command.name}: {call.spelled} is given twice")
    reference = _REFERENCE.fullmatch(call.values[0]) if len(call.values) == 1 else None
    if reference is not None and option.type != "string":
        where = f"{command.name} {call.spelled}"
        source_id, source_command = resolver.node(reference["node"], where, call.values[0])
        _add_link(node, option, source_id, source_command, reference["field"], where)
        return
    node.inputs[option.name] = convert_value(command, option, call.values)


def _add_link(
    node: PlannedNode,
    option: Option,
    source_id: str,
    source: Command,
    source_field: str | None,
    where: str,
) -> None:
    if option.direct_only:
        raise LanguageError(f"{where}: {option.flag} takes only a value, not a link")
    if source_field is None:
        source_field = _matching_output(option, source, where)
    elif source_field not in source.outputs:
        raise LanguageError(
            f"{where}: {source.name} has no output {source_field!r} "
            f"(its outputs: {', '.join(source.outputs)})"
        )
    elif not _compatible(source.outputs[source_field], option.type):
        raise LanguageError(
            f"{where}: {source.name}.{source_field} is {source.outputs[source_field]}, "
            f"{option.flag} takes {option.type}"
        )
    node.links.append(Link(source_id, source_field, option.name))


def _matching_output(option: Option, source: Command, where: str) -> str:
    if option.name in source.outputs and _compatible(source.outputs[option.name], option.type):
        return option.name
    candidates = [name for name, kind in source.outputs.items() if _compatible(kind, option.type)]
    if len(candidates) == 1:
        return candidates[0]
    outputs = ", ".join(f"{name} ({kind})" for name, kind in source.outputs.items())
    problem = "several outputs" if candidates else "no output"
    raise LanguageError(
        f"{where}: {source.name} has {problem} of type {option.type} for {option.flag}; "
        f"name one as @NODE.OUTPUT (its outputs: {outputs or 'none'})"
    )


def _compatible(source: str, destination: str) -> bool:
    """Whether an output may feed an input by their type names (the server's rule): the
    same name, integer into float, or a type variable `T` at either end."""
    if "T" in (_element(source), _element(destination)):
        return True
    if source == destination:
        return True
    return (_element(source), _element(destination)) == ("integer", "float") and (
        _depth(source) == _depth(destination)
    )


def _element(type_name: str) -> str:
    while type_name.startswith("list[") and type_name.endswith("]"):
        type_name = type_name[5:-1]
    return type_name


def _depth(type_name: str) -> int:
    return (len(type_name) - len(_element(type_name))) // 6


def _check_required(node: PlannedNode, star_sources: Sequence[Command]) -> None:
    """A required input needs a value, a named link, or an output a `*` link brings."""
    linked = {link.destination_field for link in node.links}
    for option in node.command.options.values():
        if not option.required or option.default is not NO_DEFAULT:
            continue
        if option.name in node.inputs or option.name in linked:
            continue
        if any(
            option.name in source.outputs
            and _compatible(source.outputs[option.name], option.type)
            and not option.direct_only
            for source in star_sources
        ):
            continue
        how = (
            f"pipe into it from a command with a {option.name} output, or give {option.flag} @NODE"
            if option.link_only
            else f"give {option.flag} VALUE"
        )
        raise LanguageError(f"{node.command.name} needs {option.flag} ({option.type}): {how}")
