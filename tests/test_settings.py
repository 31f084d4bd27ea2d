"""Settings come from defaults < easel.yaml < EASEL_* environment < --flags."""

from __future__ import annotations

import os
import subprocess
import sys
from ipaddress import ip_network
from pathlib import Path

import pytest

from services.common.errors import InvalidArgumentError
from services.common.settings import CommonSettings, LogFormat
from services.downloader.settings import DownloaderSettings
from services.inference.settings import InferenceSettings
from services.model_manager.settings import ModelManagerSettings
from tests.processes import REPO


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("EASEL_ROOT", "EASEL_LOG_LEVEL", "EASEL_DOWNLOADER_ADDRESS", "EASEL_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EASEL_ROOT", str(tmp_path))
    return tmp_path


def test_defaults_without_file_env_or_flags(root: Path):
    settings = CommonSettings.load([])
    assert settings.root == root
    assert settings.log_level == "info"
    assert settings.log_format is LogFormat.AUTO
    assert settings.downloader_address == "127.0.0.1:50053"
    assert settings.auth_token is None


def test_file_then_env_then_flag(root: Path, monkeypatch: pytest.MonkeyPatch):
    (root / "easel.yaml").write_text(
        "log_level: warning\ndownloader_address: 127.0.0.1:1001\nlog-format: json\n"
    )
    from_file = CommonSettings.load([])
    assert from_file.log_level == "warning"
    assert from_file.downloader_address == "127.0.0.1:1001"
    assert from_file.log_format is LogFormat.JSON

    monkeypatch.setenv("EASEL_DOWNLOADER_ADDRESS", "127.0.0.1:1002")
    from_env = CommonSettings.load([])
    assert from_env.downloader_address == "127.0.0.1:1002"
    assert from_env.log_level == "warning"

    from_flag = CommonSettings.load(["--downloader-address", "127.0.0.1:1003"])
    assert from_flag.downloader_address == "127.0.0.1:1003"
    assert from_flag.log_level == "warning"


def test_root_flag_chooses_the_settings_file(root: Path, tmp_path_factory):
    other = tmp_path_factory.mktemp("other-root")
    (other / "easel.yaml").write_text("log_level: debug\n")
    settings = CommonSettings.load(["--root", str(other)])
    assert settings.root == other
    assert settings.log_level == "debug"


def test_a_process_ignores_settings_of_the_others(root: Path):
    (root / "easel.yaml").write_text("torch_threads: 2\n")
    assert CommonSettings.load([]).log_level == "info"
    assert InferenceSettings.load([]).torch_threads == 2


def test_secret_token_is_not_shown(root: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EASEL_AUTH_TOKEN", "s3cret")
    settings = CommonSettings.load([])
    assert settings.auth_token is not None
    assert settings.auth_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_malformed_file_is_refused(root: Path):
    (root / "easel.yaml").write_text("log_level: [unclosed\n")
    with pytest.raises(InvalidArgumentError) as caught:
        CommonSettings.load([])
    assert caught.value.violations[0].field == str(root / "easel.yaml")

    (root / "easel.yaml").write_text("- a list\n")
    with pytest.raises(InvalidArgumentError, match="mapping"):
        CommonSettings.load([])


def test_invalid_value_is_refused(root: Path):
    (root / "easel.yaml").write_text("shutdown_grace_s: -1\n")
    with pytest.raises(InvalidArgumentError, match="shutdown_grace_s") as caught:
        CommonSettings.load([])
    assert [v.field for v in caught.value.violations] == ["shutdown_grace_s"]


@pytest.mark.parametrize(
    "value",
    ["127.0.0.0/8,10.0.0.0/8", " 127.0.0.0/8 , 10.0.0.0/8 ", '["127.0.0.0/8", "10.0.0.0/8"]'],
)
def test_a_list_setting_takes_plain_comma_separated_or_json_values(
    root: Path, monkeypatch: pytest.MonkeyPatch, value: str
):
    monkeypatch.setenv("EASEL_ALLOWED_NETWORKS", value)
    networks = DownloaderSettings.load([]).allowed_networks
    assert networks == [ip_network("127.0.0.0/8"), ip_network("10.0.0.0/8")]

    monkeypatch.setenv("EASEL_ALLOWED_NETWORKS", "127.0.0.0/8")
    assert DownloaderSettings.load([]).allowed_networks == [ip_network("127.0.0.0/8")]
    monkeypatch.setenv("EASEL_IMPORT_ROOTS", f"{root}/a,{root}/b")
    assert ModelManagerSettings.load([]).import_roots == [root / "a", root / "b"]


@pytest.mark.parametrize("value", ["127.0.0.0/8,not-a-network", "[not json"])
def test_an_invalid_setting_ends_a_process_with_one_clear_line(root: Path, value: str):
    env = {**os.environ, "EASEL_ROOT": str(root), "EASEL_ALLOWED_NETWORKS": value}
    done = subprocess.run(
        [sys.executable, "-m", "services.downloader.main"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("easel-downloader: invalid settings: ")
    assert "allowed_networks" in line


@pytest.mark.parametrize(
    "url",
    ["mysql://u:secret@h/db", "postgresql:secret", "sqlite:///x.db", "postgresql://h:99999/db"],
)
def test_a_bad_database_url_ends_a_process_with_one_line_without_the_password(root: Path, url: str):
    env = {**os.environ, "EASEL_ROOT": str(root), "EASEL_DATABASE_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "services.model_manager.main"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("easel-model-manager: invalid settings: database_url: ")
    assert "secret" not in line
    assert not (root / "databases").exists()


def test_database_url_takes_sqlite_or_a_postgresql_url(root: Path, monkeypatch):
    assert CommonSettings.load([]).database_url == "sqlite:"
    url = "postgresql://easel:pw@db.internal:5432/easel"
    monkeypatch.setenv("EASEL_DATABASE_URL", url)
    assert CommonSettings.load([]).database_url == url


@pytest.mark.parametrize(
    "settings_class", [InferenceSettings, ModelManagerSettings, DownloaderSettings]
)
def test_readme_documents_every_setting(settings_class: type[CommonSettings]):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in settings_class.model_fields:
        assert f"`{name}`" in readme, f"README.md does not document the setting {name}"
