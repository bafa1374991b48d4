from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edgecloud import ConfigError, cli
from edgecloud.server.settings import ENV_PREFIX, ServerSettings


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


# -- precedence: flag > EDGECLOUD_SERVER_* > --config file > default, every field --------

MIB = 1024 * 1024
#: The serve flag that sets each field, and how a value becomes its arguments.
FLAGS: dict[str, Callable[[Any], list[str]]] = {
    "host": lambda v: ["--host", v],
    "http_port": lambda v: ["--http-port", str(v)],
    "grpc_port": lambda v: ["--grpc-port", str(v)],
    "token_file": lambda v: ["--token-file", v],
    "tls_cert": lambda v: ["--tls-cert", v],
    "tls_key": lambda v: ["--tls-key", v],
    "max_request_bytes": lambda v: ["--max-request-mb", str(v / MIB)],
    "request_timeout_s": lambda v: ["--timeout", str(v)],
    "access_log": lambda v: ["--access-log" if v else "--no-access-log"],
    "device": lambda v: ["--device", v],
    "intra_op_threads": lambda v: ["--threads", str(v)],
}
#: Fields whose validation needs a partner, given from the lowest source (the file).
PARTNERS = {"tls_cert": {"tls_key": "/partner/key.pem"}, "tls_key": {"tls_cert": "/partner/c.pem"}}
FIELDS = sorted(ServerSettings.model_fields)


def sample(name: str, level: int) -> Any:
    """A JSON-ready value for ``name`` that differs from the default and, for
    levels 1, 2, 3, from its neighbours (file, environment, flag)."""
    field = ServerSettings.model_fields[name]
    default, kind = field.default, field.annotation
    if typing.get_origin(kind) is typing.Literal:
        others = [c for c in typing.get_args(kind) if c != default]
        return [*others, default][(level - 1) % (len(others) + 1)]
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = args[0] if args else kind
    if base is bool:
        return not default if level != 2 else default
    if base is int:
        return (default or 9000) + level * (MIB if default and default >= MIB else 10)
    if base is float:
        return float(default or 1) + level * 1.5
    if base is Path:
        return f"/sample/{level}/{name}"
    return f"{name}-{level}"


def resolved(args: list[str], env: dict[str, str], file: dict[str, Any], tmp: Path) -> dict:
    config = tmp / "server.yaml"
    config.write_text(yaml.safe_dump(file))
    result = CliRunner().invoke(
        cli.app, ["serve", "--print-config", "--config", str(config), *args], env=env
    )
    assert result.exit_code == 0, result.output
    return dict(yaml.safe_load(result.stdout))


def shown(name: str, value: Any) -> Any:
    return "***" if name == "token" else value


def env_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_from_the_settings_file(name: str, tmp_path: Path) -> None:
    value = sample(name, 1)
    got = resolved([], {}, {name: value, **PARTNERS.get(name, {})}, tmp_path)
    assert got[name] == shown(name, value)


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_from_the_environment_over_the_file(name: str, tmp_path: Path) -> None:
    file_value, env_value = sample(name, 1), sample(name, 2)
    env = {ENV_PREFIX + name.upper(): env_text(env_value)}
    got = resolved([], env, {name: file_value, **PARTNERS.get(name, {})}, tmp_path)
    assert got[name] == shown(name, env_value)


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_every_flag_over_the_environment_and_the_file(name: str, tmp_path: Path) -> None:
    file_value, env_value, flag_value = (sample(name, level) for level in (1, 2, 3))
    env = {ENV_PREFIX + name.upper(): env_text(env_value)}
    file = {name: file_value, **PARTNERS.get(name, {})}
    assert resolved(FLAGS[name](flag_value), env, file, tmp_path)[name] == flag_value
    # A flag left out hides nothing: the environment's value stands.
    assert resolved([], env, file, tmp_path)[name] == env_value


def test_every_cli_option_is_a_setting() -> None:
    """Each serve option except --repo, --config and --print-config maps to a field."""
    import inspect

    options = set(inspect.signature(cli.serve).parameters) - {"repo", "config", "print_config"}
    assert len(options) == len(FLAGS) and set(FLAGS) <= set(ServerSettings.model_fields)


def test_defaults_when_no_source_gives_a_value(tmp_path: Path) -> None:
    got = resolved([], {}, {}, tmp_path)
    assert got == ServerSettings().redacted()
    assert got["host"] == "127.0.0.1"  # loopback unless asked


def test_gateway_port_precedence(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("http_port: 9301\n")

    def port(*args: str, env: dict[str, str] | None = None) -> int:
        command = ["edge", "-d", "x.yaml", "--print-config", *args]
        result = CliRunner().invoke(cli.app, command, env=env or {})
        assert result.exit_code == 0, result.output
        return int(yaml.safe_load(result.stdout)["http_port"])

    assert port() == 8080
    assert port("--config", str(config)) == 9301
    assert port("--config", str(config), env={"EDGECLOUD_SERVER_HTTP_PORT": "9302"}) == 9302
    env = {"EDGECLOUD_SERVER_HTTP_PORT": "9302"}
    assert port("--config", str(config), "--port", "9303", env=env) == 9303


def test_bad_values_name_their_source(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("worker_threads: 0\nnot_a_setting: 1\n")
    with pytest.raises(ConfigError, match=f"settings file {config}"):
        ServerSettings.resolve(file=config, environ={})
    with pytest.raises(ConfigError, match="environment variable EDGECLOUD_SERVER_DEVICE"):
        ServerSettings.resolve(environ={"EDGECLOUD_SERVER_DEVICE": "tpu"})
    with pytest.raises(ConfigError, match="both 9000"):
        ServerSettings.resolve(cli={"http_port": 9000, "grpc_port": 9000}, environ={})
    assert ServerSettings.resolve(environ={"EDGECLOUD_SERVER_GRPC_PORT": "-1"}).grpc_port is None
