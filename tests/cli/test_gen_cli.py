"""`easel gen` against a real invoker (no models needed): a custom node from the custom
nodes folder is a command with no client change, pipes and history references link
nodes, a line typed at the prompt (here piped in) shares one session with the lines
before it, and every kind of failure ends with its exit code and a clear message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clients.cli.app import app
from tests.cli.conftest import Easel
from tests.invoker.custom_nodes import CUSTOM_NODE
from tests.processes import wait_serving


@pytest.fixture
def easel_gen(run_service, easel_env: dict[str, str], easel: Easel) -> Easel:
    nodes = Path(easel_env["EASEL_ROOT"]) / "nodes"
    nodes.mkdir()
    (nodes / "shout.py").write_text(CUSTOM_NODE)
    wait_serving(run_service("invoker"))
    return easel


def test_a_custom_node_is_a_command_with_its_options_and_help(easel_gen: Easel):
    listing = easel_gen.ok("gen", "help").stdout
    assert "shout" in listing
    assert "Upper-cases a text." in listing
    assert "txt2img" in listing

    help_text = easel_gen.ok("gen", "help shout").stdout
    assert "usage: shout [OPTIONS]" in help_text
    assert "--text STRING" in help_text
    assert "What to shout." in help_text

    result = easel_gen.ok("gen", "shout --text 'hello there' | shout")
    assert '2 shout: text="HELLO THERE"' in result.stdout


def test_history_references_and_links_carry_values(easel_gen: Easel):
    result = easel_gen.ok("gen", "add --a 2 --b 3 | mul --a 4 --link b -1 value")
    assert "2 mul: value=20" in result.stdout
    result = easel_gen.ok("gen", "add --a 2 --b 3 | add --a 10 | add --a 100 --b @-2.value")
    assert "3 add: value=105" in result.stdout


def test_lines_from_the_prompt_share_one_session(easel_gen: Easel):
    script = "add --a 2 --b 3\nadd --a 1 --b @-1.value\nhistory\nexit\n"
    env = {**{key: None for key in os.environ if key.startswith("EASEL_")}, **easel_gen.env}
    result = CliRunner().invoke(app, ["gen"], env=env, input=script, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "1 add: value=5" in result.stdout
    assert "2 add: value=6" in result.stdout
    history = [line.split() for line in result.stdout.splitlines() if line.startswith("@")]
    assert history == [["@-2", "@1", "add"], ["@-1", "@2", "add"]]


@pytest.mark.parametrize(
    ("line", "code", "message"),
    [
        ("nope --a 1", 2, "unknown command 'nope'"),
        ("add --c 1", 2, "add has no option --c"),
        ("add --a two", 2, "add --a expects an integer, got 'two'"),
        ("add --a 1 |", 2, "nothing at the end"),
        ("shout --text @-1", 0, 'text="@-1"'),
        ("div --a 1 --b 0", 5, "the run failed"),
    ],
)
def test_failures_end_with_their_exit_code(easel_gen: Easel, line: str, code: int, message: str):
    result = easel_gen("gen", line)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
