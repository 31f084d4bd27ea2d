"""`help`: the language, the list of commands, and one command in full."""

from __future__ import annotations

import json
from itertools import groupby

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from clients.cli.command_language.commands import NO_DEFAULT, Command, CommandSet, Option

INTRODUCTION = (
    "[bold]The node command language[/bold]\n\n"
    "Each command adds one node (an invocation) to a session, and a line runs once it is "
    "entered. A command's options are the node's inputs; inputs left out take their "
    "defaults."
)
EXAMPLE = 'txt2img --prompt "a cat eating sushi" --steps 20 --seed 1234 | upscale | show_image'

SYNTAX = (
    (
        "a | b",
        "b takes every output of a whose name and type match one of its inputs; the first "
        "command of a line does the same from the last command that ran before it",
    ),
    (
        "--input @-N",
        "link from the N-th command back (@-1: the previous one), through this line and "
        "the earlier lines that succeeded",
    ),
    (
        "--input @-N.output",
        "the same, naming the output (else the output named like the input, or the only "
        "one of its type)",
    ),
    ("--input @ID[.output]", "link from the node with that id (`history` lists them)"),
    ("--link INPUT NODE OUTPUT", "(-l) a link, NODE an id or -N"),
    ("--link_node NODE", "(-ln) link every matching output of NODE"),
    ("--image FILE", "a local image file is uploaded (else the value is a stored image's name)"),
    ("--model NAME", "a model's name or key"),
    ("--flag", "a boolean input set to true (or --flag false)"),
    ("--list a b c", "a list input (or one JSON array)"),
)

CLOSING = (
    "Quote values with spaces (\"...\" or '...'). The images that show_image or save_image "
    "keep (else those of a line's last command) are saved to the output folder and their "
    "paths printed; show_image also shows them.\n\n"
    "[bold]Other commands[/bold]: help [COMMAND], history, exit (or Ctrl-D)."
)


def language_help(commands: CommandSet) -> RenderableType:
    """The language, then every command by category."""
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    by_category = sorted(commands.commands.values(), key=lambda c: (c.category or "~", c.name))
    for category, group in groupby(by_category, key=lambda c: c.category):
        table.add_row(Text(category or "other", style="bold"), "")
        for command in group:
            table.add_row(command.name, _first_line(command.description) or command.title)
    syntax = Table(show_header=False, box=None, padding=(0, 2, 0, 2))
    syntax.add_column(style="bold", no_wrap=True)
    syntax.add_column()
    for form, meaning in SYNTAX:
        syntax.add_row(form, meaning)
    return Group(
        Text.from_markup(INTRODUCTION),
        Text(""),
        Text("  " + EXAMPLE, style="cyan"),
        Text(""),
        syntax,
        Text(""),
        Text.from_markup(CLOSING),
        Text(""),
        Text.from_markup("[bold]Node commands[/bold] (`help COMMAND` for one):"),
        table,
    )


def command_help(command: Command) -> RenderableType:
    """A command's usage, description, options (type, default, description) and outputs."""
    usage = Text.assemble(("usage: ", "bold"), command.name, " [OPTIONS]")
    title = Text.from_markup(f"[bold]{escape(command.title or command.name)}[/bold]")
    options = Table(box=None, padding=(0, 2, 0, 2), show_edge=False)
    options.add_column("option", style="cyan", no_wrap=True)
    options.add_column("type")
    options.add_column("default")
    options.add_column("description")
    for option in command.options.values():
        options.add_row(
            f"{option.flag} {option.placeholder()}",
            _kind(option),
            _default(option),
            option.description,
        )
    outputs = ", ".join(f"{name} ({kind})" for name, kind in command.outputs.items())
    parts: list[RenderableType] = [usage, title]
    if command.description:
        parts.append(Text(command.description))
    parts += [Text(""), Text("Options:", style="bold"), options]
    parts.append(Text.assemble(("Outputs: ", "bold"), outputs or "none"))
    return Group(*parts)


def _kind(option: Option) -> str:
    notes = []
    if option.required and option.default is NO_DEFAULT:
        notes.append("required")
    if option.link_only:
        notes.append("link only")
    if option.direct_only:
        notes.append("value only")
    limits = [
        f">= {option.minimum:g}" if option.minimum is not None else "",
        f"<= {option.maximum:g}" if option.maximum is not None else "",
        f"> {option.exclusive_minimum:g}" if option.exclusive_minimum is not None else "",
        f"< {option.exclusive_maximum:g}" if option.exclusive_maximum is not None else "",
        f"x{option.multiple_of:g}" if option.multiple_of is not None else "",
    ]
    notes += [limit for limit in limits if limit]
    return option.type + (f" ({', '.join(notes)})" if notes else "")


def _default(option: Option) -> str:
    if option.default is NO_DEFAULT:
        return ""
    return "none" if option.default is None else json.dumps(option.default)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
