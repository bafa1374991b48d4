"""``edgecloud schema deployment``: the JSON Schema of the deployment file accepts every
example deployment (README, advisor scenarios, the tests' trees) and rejects what
``edgecloud.load`` rejects at validation — checked by a small draft 2020-12 validator
below (``jsonschema`` is not a dependency), which refuses keywords it does not know."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from edgecloud.advisor import advise, deployment_yaml, scenario, scenario_names
from edgecloud.deployment import KINDS, DeploymentSpec

README = Path(__file__).parent.parent / "README.md"
ANNOTATIONS = {"title", "description", "default", "$schema", "discriminator", "$defs"}
TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}  # fmt: skip


def errors(schema: dict[str, Any], value: Any, root: dict[str, Any], at: str = "") -> list[str]:
    """Why ``value`` does not match ``schema`` (empty: it does), for the keywords pydantic
    emits; an unknown keyword fails the test rather than passing silently."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return errors(root["$defs"][name], value, root, at)
    out: list[str] = []
    for key, arg in schema.items():
        if key in ANNOTATIONS:
            continue
        check = CHECKS.get(key)
        assert check is not None, f"the test validator does not know {key!r}"
        out += check(arg, value, root, at, schema)
    return out


def _type(arg: str, value: Any, *_: Any) -> list[str]:
    ok = isinstance(value, TYPES[arg]) and not (arg in ("integer", "number") and value is True)
    ok = ok and not (arg in ("integer", "number") and isinstance(value, bool))
    return [] if ok else [f"not {arg}: {value!r}"]


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _properties(arg: dict[str, Any], value: Any, root: Any, at: str, _: Any) -> list[str]:
    obj = _object(value)
    return [e for k, s in arg.items() if k in obj for e in errors(s, obj[k], root, f"{at}.{k}")]


def _additional(arg: Any, value: Any, root: Any, at: str, schema: dict[str, Any]) -> list[str]:
    extra = [k for k in _object(value) if k not in schema.get("properties", {})]
    if arg is False:
        return [f"{at}.{k}: not allowed" for k in extra]
    return [e for k in extra for e in errors(arg, value[k], root, f"{at}.{k}")]


def _one_of(arg: list[Any], value: Any, root: Any, at: str, _: Any) -> list[str]:
    matched = sum(not errors(s, value, root, at) for s in arg)
    return [] if matched == 1 else [f"{at}: matches {matched} of oneOf"]


def _any_of(arg: list[Any], value: Any, root: Any, at: str, _: Any) -> list[str]:
    return [] if any(not errors(s, value, root, at) for s in arg) else [f"{at}: no anyOf"]


def _bound(op: Any, name: str) -> Any:
    def check(arg: float, value: Any, *_: Any) -> list[str]:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if not number or op(value, arg) else [f"{value} fails {name} {arg}"]

    return check


CHECKS: dict[str, Any] = {
    "type": _type,
    "properties": _properties,
    "additionalProperties": _additional,
    "required": lambda arg, v, *_: [f"missing {k}" for k in arg if k not in _object(v)],
    "oneOf": _one_of,
    "anyOf": _any_of,
    "not": lambda arg, v, root, at, _: [] if errors(arg, v, root, at) else [f"{at}: not"],
    "const": lambda arg, v, *_: [] if v == arg and type(v) is type(arg) else ["const"],
    "enum": lambda arg, v, *_: [] if v in arg else [f"{v!r} not in {arg}"],
    "items": lambda arg, v, root, at, _: [
        e for i, x in enumerate(v if isinstance(v, list) else []) for e in errors(arg, x, root, at)
    ],
    "minItems": lambda arg, v, *_: [] if not isinstance(v, list) or len(v) >= arg else ["short"],
    "minLength": lambda arg, v, *_: [] if not isinstance(v, str) or len(v) >= arg else ["short"],
    "propertyNames": lambda arg, v, root, at, _: [
        e for k in _object(v) for e in errors(arg, k, root, at)
    ],
    "minimum": _bound(lambda v, a: v >= a, "minimum"),
    "maximum": _bound(lambda v, a: v <= a, "maximum"),
    "exclusiveMinimum": _bound(lambda v, a: v > a, "exclusiveMinimum"),
    "exclusiveMaximum": _bound(lambda v, a: v < a, "exclusiveMaximum"),
}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """What ``edgecloud schema deployment`` prints."""
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "schema", "deployment"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed: dict[str, Any] = json.loads(result.stdout)
    assert printed == DeploymentSpec.json_schema()
    return printed


def readme_deployments() -> list[dict[str, Any]]:
    """Every YAML block of the README with a top-level ``root`` (a deployment file)."""
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)]
    found = [b for b in blocks if isinstance(b, dict) and "root" in b]
    assert len(found) >= 2, "the README shows deployment files"
    return found


def advisor_deployments() -> list[dict[str, Any]]:
    return [yaml.safe_load(deployment_yaml(advise(scenario(name)))) for name in scenario_names()]


CASCADE = {"small": "local", "large": {"prefer_remote": {"remote": "cloud", "local": "local"}},
           "threshold": 0.9, "small_model": "s", "large_model": "l"}  # fmt: skip
GOOD_ROOTS: list[Any] = [
    "local", "cloud", {"local": None}, {"local": {"threads": 2}}, {"remote": "cloud"},
    {"guard": {"rules": {"personal": "local"}, "inner": {"cascade": CASCADE}}},
    {"fastest": {"paths": ["local", "cloud", {"remote": "cloud"}], "hedge": True}},
    {"fallback": {"primary": {"split": {"model": "m", "remote": "cloud"}}, "secondary": "local"}},
    {"filter": {"trigger": {"kind": "anomaly", "mean": [0.0, 1.0], "std": [1.0, 2.0]},
                "inner": "cloud", "segment": {"pre_roll_s": 0.5}}},
    {"filter": {"trigger": {"kind": "vad"}, "inner": {"prefer_local": {"local": "local",
                                                                       "remote": "cloud"}}}},
]  # fmt: skip
BAD_ROOTS: list[Any] = [
    ["local", "cloud"], 3, None, "", {}, {"teleport": {}},
    {"cascade": CASCADE | {"threshold": 2}},
    {"cascade": CASCADE | {"colour": "red"}},
    {"cascade": {"small": "local"}},
    {"guard": {"inner": "local"}, "cascade": CASCADE},
    {"guard": {"inner": "local", "rules": {"secret": "local"}}},
    {"fastest": {"paths": ["local"]}},
    {"filter": {"trigger": {"kind": "teleport"}, "inner": "cloud"}},
    {"filter": {"trigger": {"kind": "frame-diff", "threshold": -1}, "inner": "cloud"}},
    {"filter": {"trigger": {"kind": "vad"}}},
    {"local": {"device": "tpu"}},
]  # fmt: skip


def spec_with(root: Any) -> dict[str, Any]:
    return {"remotes": {"cloud": {"url": "http://127.0.0.1:8000"}}, "outbox": {}, "root": root}


def test_the_example_deployments_validate(schema: dict[str, Any]) -> None:
    for example in readme_deployments() + advisor_deployments():
        assert errors(schema, example, schema) == [], example


@pytest.mark.parametrize("root", GOOD_ROOTS)
def test_the_schema_accepts_what_load_accepts(schema: dict[str, Any], root: Any) -> None:
    spec = spec_with(root)
    DeploymentSpec.model_validate(spec)
    assert errors(schema, spec, schema) == []


@pytest.mark.parametrize("root", BAD_ROOTS)
def test_the_schema_rejects_what_load_rejects(schema: dict[str, Any], root: Any) -> None:
    spec = spec_with(root)
    with pytest.raises(ValidationError):
        DeploymentSpec.model_validate(spec)
    assert errors(schema, spec, schema) != []


@pytest.mark.parametrize(
    "spec",
    [{"root": "local", "colour": "red"}, {"repository": "x"},
     {"remotes": {"local": {"url": "http://x"}}, "root": "local"},
     {"remotes": {"cloud": {"uri": "http://x"}}, "root": "local"},
     {"outbox": {"full_policy": "panic"}, "root": "local"}],
)  # fmt: skip
def test_the_schema_rejects_a_wrong_top_level(schema: dict[str, Any], spec: Any) -> None:
    with pytest.raises(ValidationError):
        DeploymentSpec.model_validate(spec)
    assert errors(schema, spec, schema) != []


def test_a_node_is_one_of_the_registered_kinds(schema: dict[str, Any]) -> None:
    refs = [
        choice["$ref"].removeprefix("#/$defs/") for choice in schema["properties"]["root"]["oneOf"]
    ]
    assert refs == [cls.__name__ for cls in KINDS.values()]
    for cls in KINDS.values():
        forms = schema["$defs"][cls.__name__]
        assert forms["description"] and cls.kind in json.dumps(forms)


def test_an_unknown_schema_is_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "schema", "workload-of-dreams"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no schema for 'workload-of-dreams'; use one of deployment" in result.stderr
