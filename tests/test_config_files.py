"""The one YAML loader every config file goes through (``edgecloud._config_files``):
a key written twice is refused at any depth, naming key and lines; floats read as
YAML 1.2 writes them (``5e-1`` is a number, as editors and JSON Schema see it) —
in deployment files, server settings, workload specs and model configs alike."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

import edgecloud
from edgecloud._config_files import load_yaml, read_mapping
from edgecloud.advisor.spec import load_workload
from edgecloud.errors import ConfigError, ModelLoadError
from edgecloud.repository import ModelRepository
from edgecloud.server.settings import ServerSettings

from .models import affine_config, affine_onnx

DUPLICATES = [
    ("top level", "a: 1\nb: 2\na: 3\n", "line 3: the key 'a'", "first at line 1"),
    ("nested block", "a:\n  b:\n    c: 1\n    c: 2\n", "line 4: the key 'c'", "first at line 3"),
    ("flow mapping", "a: {b: 1, b: 2}\n", "line 1: the key 'b'", "first at line 1"),
    ("in a list item", "a:\n  - {x: 1}\n  - x: 1\n    y: 2\n    x: 3\n", "line 5: the key 'x'",
     "first at line 3"),
    ("quoted and plain", "a: 1\n'a': 2\n", "line 2: the key 'a'", "first at line 1"),
    ("numeric keys", "1: a\n1: b\n", "line 2: the key 1", "first at line 1"),
]  # fmt: skip


@pytest.mark.parametrize(("form", "text", "key", "first"), DUPLICATES,
                         ids=[d[0] for d in DUPLICATES])  # fmt: skip
def test_a_key_written_twice_is_refused_at_any_depth(form, text, key, first) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        load_yaml(text, "f.yaml")
    message = caught.value.message
    assert message.startswith("f.yaml: ") and key in message and first in message
    assert "\n" not in message


def test_merge_keys_may_be_overridden_and_distinct_keys_pass() -> None:
    text = "base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  x: 3\n"
    assert load_yaml(text, "f") == {"base": {"x": 1, "y": 2}, "use": {"x": 3, "y": 2}}
    assert load_yaml("a: {b: 1, c: 2}\nd: [1, 1]\n", "f") == {"a": {"b": 1, "c": 2}, "d": [1, 1]}


FLOATS = [("5e-1", 0.5), ("1e-3", 0.001), ("1e3", 1000.0), ("-2E+2", -200.0), ("+.5", 0.5),
          ("1.", 1.0), (".5e1", 5.0), ("0.25", 0.25), ("1.5e+3", 1500.0)]  # fmt: skip


@pytest.mark.parametrize(("written", "value"), FLOATS)
def test_yaml_12_floats_are_numbers(written: str, value: float) -> None:
    got = load_yaml(f"v: {written}\n", "f")["v"]
    assert type(got) is float and got == value
    assert yaml.safe_load(f"v: {written}\n")["v"] in (value, written)  # PyYAML 1.1 may differ


@pytest.mark.parametrize(
    ("written", "value"),
    [("1", 1), ("-3", -3), ("0x1f", 31), ('"5e-1"', "5e-1"), ("'1e3'", "1e3"), ("e5", "e5"),
     ("1e", "1e"), ("1.2.3", "1.2.3"), ("true", True), ("~", None)],
)  # fmt: skip
def test_the_rest_reads_as_before(written: str, value: object) -> None:
    got = load_yaml(f"v: {written}\n", "f")["v"]
    assert got == value and type(got) is type(value)


def test_infinities_and_nan_keep_their_yaml_forms() -> None:
    got = load_yaml("a: .inf\nb: -.Inf\nc: .nan\n", "f")
    assert got["a"] == math.inf and got["b"] == -math.inf and math.isnan(got["c"])


def test_read_mapping_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a: 1\na: 2\n")
    with pytest.raises(ConfigError, match=rf"^{path}: line 2: the key 'a' is written a second"):
        read_mapping(path, "thing", "a")
    path.write_bytes(b"a: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_mapping(path, "thing", "a")


def test_deployment_files(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("root:\n  remote: cloud\nremotes:\n  cloud: {url: 'http://127.0.0.1:9', "
                    "timeout_s: 5e-1}\n")  # fmt: skip
    with edgecloud.load(path) as deployment:
        assert deployment.spec.remotes["cloud"].timeout_s == 0.5
    path.write_text(path.read_text() + "root:\n  remote: other\n")
    with pytest.raises(ConfigError, match=rf"{path}: line 5: the key 'root'.*first at line 1"):
        edgecloud.load(path)


def test_server_settings_files(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("request_timeout_s: 25e-1\n")
    assert ServerSettings.resolve(file=path, environ={}).request_timeout_s == 2.5
    path.write_text("request_timeout_s: 2\nrequest_timeout_s: 3\n")
    with pytest.raises(ConfigError, match="line 2: the key 'request_timeout_s'"):
        ServerSettings.resolve(file=path, environ={})


def test_workload_files(tmp_path: Path) -> None:
    scenario = Path(edgecloud.__file__).parent / "advisor" / "scenarios" / "camera-fleet.yaml"
    text = scenario.read_text()
    path = tmp_path / "w.yaml"
    path.write_text(text.replace("availability: 0.99", "availability: 99e-2"))
    assert load_workload(path).application.availability == 0.99
    path.write_text(text.replace("  rtt_ms: 40\n", "  rtt_ms: 40\n  rtt_ms: 80\n"))
    with pytest.raises(ConfigError, match="the key 'rtt_ms' is written a second time"):
        load_workload(path)


def test_model_configs(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    repo.add_version("affine", affine_onnx(tmp_path / "a.onnx"), config=affine_config())
    config = repo.root / "affine" / "config.yaml"
    config.write_text(config.read_text() + "name: affine\n")
    with pytest.raises(ModelLoadError, match="the key 'name' is written a second time"):
        repo.config("affine")
