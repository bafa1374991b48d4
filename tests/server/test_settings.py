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
    "fleet": lambda v: ["--fleet", v],
    "fleet_keys": lambda v: ["--fleet-keys", v],
    "model_control": lambda v: ["--model-control", v],
    "poll_interval_s": lambda v: ["--poll-interval-s", str(v)],
    "load_models": lambda v: [a for m in v for a in ("--load-model", m)],
    "workers": lambda v: ["--workers", str(v)],
}
#: Fields whose validation needs a partner, given from the same source (a pair
#: resolves by the source that gives it: see test_groups_resolve_by_source).
PARTNERS = {
    "tls_cert": {"tls_key": "/partner/key.pem"},
    "tls_key": {"tls_cert": "/partner/c.pem"},
    "fleet_keys": {"fleet": "/partner/fleet"},
}


def partner_env(name: str, level: int) -> dict[str, str]:
    return {ENV_PREFIX + k.upper(): f"{v}.{level}" for k, v in PARTNERS.get(name, {}).items()}


def partner_flags(name: str, level: int) -> list[str]:
    return [a for k, v in PARTNERS.get(name, {}).items() for a in FLAGS[k](f"{v}.{level}")]


FIELDS = sorted(ServerSettings.model_fields)


def sample(name: str, level: int) -> Any:
    """A JSON-ready value for ``name`` that differs from the default and, for
    levels 1, 2, 3, from its neighbours (file, environment, flag)."""
    field = ServerSettings.model_fields[name]
    default, kind = field.default, field.annotation
    if typing.get_origin(kind) is typing.Literal:
        others = [c for c in typing.get_args(kind) if c != default]
        return [*others, default][(level - 1) % (len(others) + 1)]
    if typing.get_origin(kind) is list:
        return [f"{name}-{level}", "second"]
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
    if isinstance(value, list):
        return ",".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_from_the_settings_file(name: str, tmp_path: Path) -> None:
    value = sample(name, 1)
    got = resolved([], {}, {name: value, **PARTNERS.get(name, {})}, tmp_path)
    assert got[name] == shown(name, value)


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_from_the_environment_over_the_file(name: str, tmp_path: Path) -> None:
    file_value, env_value = sample(name, 1), sample(name, 2)
    env = {ENV_PREFIX + name.upper(): env_text(env_value), **partner_env(name, 2)}
    got = resolved([], env, {name: file_value, **PARTNERS.get(name, {})}, tmp_path)
    assert got[name] == shown(name, env_value)


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_every_flag_over_the_environment_and_the_file(name: str, tmp_path: Path) -> None:
    file_value, env_value, flag_value = (sample(name, level) for level in (1, 2, 3))
    env = {ENV_PREFIX + name.upper(): env_text(env_value), **partner_env(name, 2)}
    file = {name: file_value, **PARTNERS.get(name, {})}
    args = FLAGS[name](flag_value) + partner_flags(name, 3)
    assert resolved(args, env, file, tmp_path)[name] == flag_value
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


# -- groups: alternatives and pairs resolve by the precedence of their source ----------

LEVELS = ["file", "env", "cli"]


def sources(tmp: Path, given: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``resolve`` arguments giving ``given[level]`` from each level."""
    config = tmp / "server.yaml"
    config.write_text(yaml.safe_dump(given.get("file", {})))
    env = {ENV_PREFIX + k.upper(): str(v) for k, v in given.get("env", {}).items()}
    return {"file": config, "environ": env, "cli": given.get("cli", {})}


#: (higher, lower) source pairs.
RANKED = [(h, lo) for i, h in enumerate(LEVELS) for lo in LEVELS[:i]]


@pytest.mark.parametrize(("high", "low"), RANKED)
@pytest.mark.parametrize("high_gives", ["token", "token_file"])
def test_token_alternatives_resolve_by_source(
    high: str, low: str, high_gives: str, tmp_path: Path
) -> None:
    """The highest source giving either alternative wins; the lower one's is ignored."""
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text("old-secret\n")
    new.write_text("new-secret\n")
    low_gives = "token_file" if high_gives == "token" else "token"
    value = {"token": "new-secret", "token_file": str(new)}[high_gives]
    low_value = {"token": "old-secret", "token_file": str(old)}[low_gives]
    given = {high: {high_gives: value}, low: {low_gives: low_value}}
    settings = ServerSettings.resolve(**sources(tmp_path, given))
    assert settings.bearer_token() == "new-secret"
    assert getattr(settings, low_gives) is None


@pytest.mark.parametrize("level", LEVELS)
def test_two_alternatives_from_one_source_are_refused(level: str, tmp_path: Path) -> None:
    given = {level: {"token": "a", "token_file": str(tmp_path / "t")}}
    with pytest.raises(ConfigError, match="token .*and token_file .*two ways") as caught:
        ServerSettings.resolve(**sources(tmp_path, given))
    where = {"file": "settings file", "env": "EDGECLOUD_SERVER_TOKEN_FILE", "cli": "command line"}
    assert where[level] in str(caught.value)
    with pytest.raises(ValueError, match="two ways"):
        ServerSettings(token="a", token_file=tmp_path / "t")


@pytest.mark.parametrize(("high", "low"), RANKED)
def test_tls_pair_comes_from_one_source(high: str, low: str, tmp_path: Path) -> None:
    pair = {"tls_cert": "/high/cert.pem", "tls_key": "/high/key.pem"}
    lower = {"tls_cert": "/low/cert.pem", "tls_key": "/low/key.pem"}
    settings = ServerSettings.resolve(**sources(tmp_path, {high: pair, low: lower}))
    assert (str(settings.tls_cert), str(settings.tls_key)) == ("/high/cert.pem", "/high/key.pem")
    for half in ("tls_cert", "tls_key"):  # half a pair above the other half: refused
        other = "tls_key" if half == "tls_cert" else "tls_cert"
        given = {high: {half: pair[half]}, low: {other: lower[other]}}
        with pytest.raises(ConfigError, match=f"{half} comes from .* but {other} only from"):
            ServerSettings.resolve(**sources(tmp_path, given))


def test_the_reported_token_case_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`token: old-secret` in --config, `EDGECLOUD_SERVER_TOKEN` too, --token-file
    new.txt on the command line: the flag's token file, nothing else."""
    monkeypatch.chdir(tmp_path)
    Path("new.txt").write_text("new-secret\n")
    env = {"EDGECLOUD_SERVER_TOKEN": "env-secret"}
    got = resolved(["--token-file", "new.txt"], env, {"token": "old-secret"}, tmp_path)
    assert got["token"] is None and got["token_file"] == "new.txt"
    got = resolved([], env, {"token_file": "new.txt"}, tmp_path)
    assert got["token"] == "***" and got["token_file"] is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"file": {"grpc_port": 9001}, "env": {"grpc_port": -1}}, None),
        ({"file": {"grpc_port": 9001}, "env": {"grpc_port": "off"}}, None),
        ({"file": {"grpc_port": None}}, None),
        ({"env": {"grpc_port": 9005}, "cli": {"grpc_port": -1}}, None),
        ({"env": {"grpc_port": -1}, "cli": {"grpc_port": 9007}}, 9007),
        ({"file": {"grpc_port": -1}, "env": {"grpc_port": 9008}}, 9008),
    ],
)
def test_grpc_off_is_a_value_of_its_source(
    given: dict[str, dict[str, Any]], expected: int | None, tmp_path: Path
) -> None:
    assert ServerSettings.resolve(**sources(tmp_path, given)).grpc_port == expected


@pytest.mark.parametrize(
    ("variable", "hint"),
    [
        ("EDGECLOUD_SERVER_HTTP_PROT", "EDGECLOUD_SERVER_HTTP_PORT"),
        ("EDGECLOUD_SERVER_TOKENFILE", "EDGECLOUD_SERVER_TOKEN_FILE"),
        ("EDGECLOUD_SERVER_", None),
        ("EDGECLOUD_SERVER_http_port", "EDGECLOUD_SERVER_HTTP_PORT"),
        ("EDGECLOUD_SERVER_COMPLETELY_UNRELATED", None),
    ],
)
def test_unknown_environment_variables_are_refused(variable: str, hint: str | None) -> None:
    """A typo in a variable is an error, as an unknown key in the settings file is."""
    with pytest.raises(ConfigError, match=f"environment variable {variable} names no") as caught:
        ServerSettings.resolve(environ={variable: "9000"})
    if hint:
        assert f"did you mean {hint}?" in str(caught.value)
    for command in (["serve", "--print-config"], ["edge", "-d", "x.yaml", "--print-config"]):
        result = CliRunner().invoke(cli.app, command, env={variable: "9000"})
        assert isinstance(result.exception, ConfigError), result.output
        assert variable in str(result.exception)


def test_a_yaml_null_gives_no_alternative(tmp_path: Path) -> None:
    """`token: null` beside `token_file` in one file is one alternative, not two."""
    (tmp_path / "t.txt").write_text("from-file\n")
    given = {"file": {"token": None, "token_file": str(tmp_path / "t.txt")}}
    assert ServerSettings.resolve(**sources(tmp_path, given)).bearer_token() == "from-file"
