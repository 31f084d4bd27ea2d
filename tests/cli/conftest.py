"""Running `easel` in-process against the suite's real services."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from clients.cli.app import app


class Easel:
    """`easel` as a user runs it, with the settings of the suite `env` describes (its root,
    addresses and token reach the CLI as EASEL_* variables, as they would from a shell)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, *args: str) -> Result:
        # Settings from the test process's own environment must not leak in.
        cleared: dict[str, str | None] = {
            key: None for key in os.environ if key.startswith("EASEL_")
        }
        env = {**cleared, **self.env, "COLUMNS": "250"}
        return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)

    def ok(self, *args: str) -> Result:
        """Run a command that must succeed."""
        result = self(*args)
        assert result.exit_code == 0, f"exit {result.exit_code}:\n{result.output}"
        return result

    def json(self, *args: str) -> Any:
        """The parsed `--json` output of a command that must succeed."""
        return json.loads(self.ok(*args, "--json").stdout)


@pytest.fixture
def easel(easel_env: dict[str, str]) -> Easel:
    """`easel` for the services this test starts with `run_service` (it reads `easel_env`,
    where each started service records its address)."""
    return Easel(easel_env)
