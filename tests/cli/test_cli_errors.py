"""How `easel` fails: one line of what went wrong, a hint of what to do, the documented
exit code, and a traceback only with --debug; through the installed entry point too."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from clients.cli.connection import Connection
from clients.cli.errors import EXIT_CODES, ExitCode
from tests.cli.conftest import Easel
from tests.processes import REPO, SERVICE_MODULES, address_key, free_port, wait_serving

COMMANDS = ("models", "downloads", "queue", "images", "cache", "status", "gen", "demo")


@pytest.fixture
def nowhere(easel_env: dict[str, str]) -> dict[str, str]:
    """The suite's environment with every address leading to a closed port."""
    for name in SERVICE_MODULES:
        easel_env[address_key(name)] = f"127.0.0.1:{free_port()}"
    return easel_env


def test_help_lists_the_commands_and_the_exit_codes(easel: Easel):
    shown = easel.ok("--help").stdout
    for command in COMMANDS:
        assert command in shown
    for code, meaning in EXIT_CODES.items():
        assert f"{int(code)}  {meaning.split()[0]}" in shown


def test_the_readme_lists_every_exit_code():
    readme = (REPO / "README.md").read_text()
    for code in ExitCode:
        assert f"\n| {int(code)} | " in readme


def test_an_unreachable_service_exits_4_with_a_hint_and_no_traceback(nowhere, easel: Easel):
    down = easel("models", "list")
    assert down.exit_code == ExitCode.UNAVAILABLE == 4
    assert down.stderr.startswith("error: ")
    assert "easel status" in down.stderr
    assert "Traceback" not in down.output

    debugged = easel("--debug", "models", "list")
    assert debugged.exit_code == 4
    assert "Traceback" in debugged.stderr


def test_a_wrong_token_exits_7(run_service, easel_env, easel: Easel):
    wait_serving(run_service("model_manager"))
    easel_env["EASEL_AUTH_TOKEN"] = "not-the-token"
    refused = easel("models", "list")
    assert refused.exit_code == ExitCode.UNAUTHENTICATED == 7
    assert "EASEL_AUTH_TOKEN" in refused.stderr
    token_given = easel("--auth-token", easel_env["EASEL_AUTH_TOKEN"], "models", "list")
    assert token_given.exit_code == 7  # the flag is read, and is just as wrong


def test_bad_usage_and_invalid_settings_exit_2(easel_env, easel: Easel):
    assert easel("paint").exit_code == ExitCode.USAGE == 2
    assert easel("models", "list", "--limit", "3").exit_code == 2
    easel_env["EASEL_MAX_MESSAGE_BYTES"] = "lots"
    invalid = easel("models", "list")
    assert invalid.exit_code == 2
    assert "max_message_bytes" in invalid.stderr
    assert "easel.yaml" in invalid.stderr


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch, easel: Easel):
    def interrupted(self: Connection):
        raise KeyboardInterrupt

    monkeypatch.setattr(Connection, "client", property(interrupted))
    stopped = easel("queue", "list")
    assert stopped.exit_code == ExitCode.INTERRUPTED == 130
    assert "interrupted" in stopped.stderr


def test_the_console_script_ends_with_the_same_codes(nowhere):
    [script] = entry_points(group="console_scripts", name="easel")
    assert script.value == "clients.cli.app:main"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "clients.cli", *args]
        return subprocess.run(command, env=nowhere, cwd=REPO, capture_output=True, text=True)

    down = run("images", "list")
    assert down.returncode == 4
    assert "error:" in down.stderr
    assert "Traceback" not in down.stderr
    assert run("images", "list", "--bogus").returncode == 2
    assert run("--help").returncode == 0
