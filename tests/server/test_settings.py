from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud import ConfigError
from edgecloud.server.settings import ServerSettings


def test_environment_overrides_and_explicit_values_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLOUD_SERVER_TOKEN", "from-env")
    monkeypatch.setenv("EDGECLOUD_SERVER_MAX_REQUEST_BYTES", "4096")
    settings = ServerSettings.from_env(http_port=9000, max_request_bytes=None)
    assert settings.bearer_token() == "from-env"
    assert settings.max_request_bytes == 4096 and settings.http_port == 9000
    assert settings.host == "127.0.0.1"  # loopback unless asked


def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLOUD_SERVER_HTTP_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="server setting http_port"):
        ServerSettings.from_env()


def test_tls_needs_both_files_and_token_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        ServerSettings.from_env(tls_cert=tmp_path / "cert.pem")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="cannot read a token|is empty"):
        ServerSettings(token_file=tmp_path / "empty").bearer_token()
    (tmp_path / "token").write_text("abc\n")
    assert ServerSettings(token_file=tmp_path / "token").bearer_token() == "abc"
