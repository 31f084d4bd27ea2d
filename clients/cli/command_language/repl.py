"""Interactive use: a prompt with line editing, history kept across runs, and completion
of command names, options and choices (readline, where Python has it).

A failed line is reported as `easel` reports any failure and the prompt comes back; the
whole session ends with the exit code of the last line. Read from a pipe instead of a
terminal, the lines run as a script that stops at the first failure.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from clients.cli.command_language.commands import CommandSet
from clients.cli.command_language.runner import LANGUAGE_COMMANDS, GenSession
from clients.cli.command_language.syntax import PIPE, LanguageError, option_name, split_words
from clients.cli.errors import ExitCode, report

PROMPT = "easel> "
HISTORY_LENGTH = 1000


def completions(commands: CommandSet, line: str, text: str) -> list[str]:
    """What may complete `text`, the word being typed at the end of `line`: a command name
    at the start of a command, an option of the current command, or an option's choice."""
    try:
        words = split_words(line[: len(line) - len(text)])
    except LanguageError:
        return []
    segment = []
    for word in words:
        segment = [] if word.text == PIPE and not word.quoted else [*segment, word]
    if not segment:
        first = not words
        names = [*commands.names(), *(LANGUAGE_COMMANDS if first else ())]
        return [name + " " for name in names if name.startswith(text)]
    head = segment[0].text
    if head == "help" and len(segment) == 1:
        return [name + " " for name in commands.names() if name.startswith(text)]
    command = commands.commands.get(head)
    if command is None:
        return []
    previous = option_name(segment[-1]) if len(segment) > 1 else None
    if previous in command.options and not text.startswith("-"):
        option = command.options[previous]
        choices = option.choices or (("true", "false") if option.type == "boolean" else ())
        return [choice + " " for choice in choices if choice.startswith(text)]
    flags = [option.flag for option in command.options.values()] + ["--link", "--link_node"]
    return [flag + " " for flag in flags if flag.startswith(text)]


def run_interactive(session: GenSession, history_file: Path | None) -> ExitCode:
    """The prompt loop until `exit` or end of input; returns the exit code to end with."""
    interactive = sys.stdin.isatty()
    code = ExitCode.OK
    editing = _line_editing(session.commands, history_file)
    with editing if interactive else contextlib.nullcontext():
        if interactive:
            session.out.print(
                "Easel's node command language: `help` for the language and the commands, "
                "Tab to complete, `exit` or Ctrl-D to leave."
            )
        for line in _lines(interactive):
            if line.strip() in ("exit", "quit"):
                break
            try:
                session.run_line(line)
                code = ExitCode.OK
            except (Exception, KeyboardInterrupt) as error:
                code = report(error)
                if not interactive:
                    break
    return code


def _lines(interactive: bool) -> Iterator[str]:
    while True:
        try:
            yield input(PROMPT) if interactive else next(sys.stdin).rstrip("\n")
        except KeyboardInterrupt:
            print()  # a fresh prompt, as a shell does
        except (EOFError, StopIteration):
            if interactive:
                print()
            return


@contextlib.contextmanager
def _line_editing(commands: CommandSet, history_file: Path | None) -> Iterator[None]:
    try:
        import readline
    except ImportError:  # no readline on this platform: plain input() still works
        yield
        return
    readline.set_completer(_completer(commands, readline.get_line_buffer))
    readline.set_completer_delims(" \t|")
    binding = "bind ^I rl_complete" if "libedit" in (readline.__doc__ or "") else "tab: complete"
    readline.parse_and_bind(binding)
    if history_file is not None:
        with contextlib.suppress(OSError):
            readline.read_history_file(history_file)
        readline.set_history_length(HISTORY_LENGTH)
    try:
        yield
    finally:
        if history_file is not None:
            with contextlib.suppress(OSError):
                history_file.parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(history_file)


def _completer(
    commands: CommandSet, line_buffer: Callable[[], str]
) -> Callable[[str, int], str | None]:
    found: list[str] = []

    def complete(text: str, state: int) -> str | None:
        if state == 0:
            found[:] = completions(commands, line_buffer(), text)
        return found[state] if state < len(found) else None

    return complete
