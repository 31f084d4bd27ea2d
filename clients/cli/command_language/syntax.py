"""The words of a command line: commands split at `|`, each a name and its options.

Quoting is the shell's: "double" and 'single' quotes group words (a `|` inside quotes is
text), a backslash escapes the next character outside single quotes. An option is
`--name` (or `--name=value`) followed by the words up to the next option; the
short link options `-l` and `-ln` are options too, every other word starting with one
dash (`-1`, `-0.5`) is a value. Names take `-` or `_` alike (`--cfg-scale`, `--cfg_scale`).
This layer knows no command: what the values mean is `commands`' business.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clients.cli.errors import UsageError

PIPE = "|"
SHORT_OPTIONS = {"-l": "link", "-ln": "link_node"}


class LanguageError(UsageError):
    """A line the command language cannot run: bad syntax, an unknown command or option,
    a value of the wrong type (exit code 2, like any bad usage)."""


@dataclass(frozen=True)
class Word:
    text: str
    quoted: bool = False
    """Whether it starts with a quoted or escaped character: then it is never a `|` or an
    option, whatever it reads."""


@dataclass
class OptionCall:
    """One option as written: its name (normalised to `_`) and the words after it."""

    name: str
    values: list[str] = field(default_factory=list)
    spelled: str = ""
    """How the user wrote it, for messages."""


@dataclass
class CommandCall:
    """One command of a line: its name and options in the order written."""

    name: str
    options: list[OptionCall] = field(default_factory=list)


def split_words(line: str) -> list[Word]:
    """The words of `line`; an unquoted `|` is a word of its own."""
    words: list[Word] = []
    current: list[str] = []
    in_word = quoted = False
    index = 0

    def finish() -> None:
        nonlocal in_word, quoted
        if in_word:
            words.append(Word("".join(current), quoted))
        current.clear()
        in_word = quoted = False

    while index < len(line):
        char = line[index]
        if char.isspace():
            finish()
        elif char == PIPE:
            finish()
            words.append(Word(PIPE))
        elif char in "'\"":
            end = _closing_quote(line, index)
            text = line[index + 1 : end]
            current.append(_unescape(text) if char == '"' else text)
            quoted = quoted or not in_word
            in_word = True
            index = end
        elif char == "\\":
            if index + 1 == len(line):
                raise LanguageError("the line ends with a lone backslash")
            current.append(line[index + 1])
            quoted = quoted or not in_word
            in_word = True
            index += 1
        else:
            current.append(char)
            in_word = True
        index += 1
    finish()
    return words


def _closing_quote(line: str, start: int) -> int:
    quote = line[start]
    index = start + 1
    while index < len(line):
        if line[index] == "\\" and quote == '"':
            index += 2
            continue
        if line[index] == quote:
            return index
        index += 1
    raise LanguageError(f"unclosed {quote} quote starting at column {start + 1}")


def _unescape(text: str) -> str:
    """Backslash escapes of a double-quoted string: `\\"` and `\\\\` (as the shell does)."""
    out: list[str] = []
    index = 0
    while index < len(text):
        if text[index] == "\\" and index + 1 < len(text) and text[index + 1] in '"\\':
            out.append(text[index + 1])
            index += 2
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


def option_name(word: Word) -> str | None:
    """The normalised option name a word introduces, or None for a value."""
    if word.quoted:
        return None
    if word.text in SHORT_OPTIONS:
        return SHORT_OPTIONS[word.text]
    if word.text.startswith("--") and len(word.text) > 2:
        return word.text[2:].split("=", 1)[0].replace("-", "_")
    return None


def parse_line(line: str) -> list[CommandCall]:
    """The commands of a line, in order; an empty line has none."""
    words = split_words(line)
    if not words:
        return []
    segments: list[list[Word]] = [[]]
    for word in words:
        if word.text == PIPE and not word.quoted:
            segments.append([])
        else:
            segments[-1].append(word)
    calls = []
    for position, segment in enumerate(segments):
        if not segment:
            where = ("start", "middle", "end")[(position > 0) + (position == len(segments) - 1)]
            raise LanguageError(f"a `|` needs a command on each side (nothing at the {where})")
        calls.append(_parse_command(segment))
    return calls


def _parse_command(words: list[Word]) -> CommandCall:
    head = words[0]
    if option_name(head) is not None or head.text.startswith("-"):
        raise LanguageError(f"expected a command name, got {head.text!r}")
    call = CommandCall(head.text)
    for word in words[1:]:
        name = option_name(word)
        if name is not None:
            option = OptionCall(name, spelled=word.text.split("=", 1)[0])
            if "=" in word.text and word.text.startswith("--"):
                option.values.append(word.text.split("=", 1)[1])
            call.options.append(option)
        elif not call.options:
            raise LanguageError(
                f"{call.name}: unexpected value {word.text!r}; values follow an option "
                f"(e.g. `{call.name} --name value`)"
            )
        else:
            call.options[-1].values.append(word.text)
    return call
