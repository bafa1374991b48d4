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
    "minProperties": lambda arg, v, *_: [] if len(_object(v)) >= arg else ["few properties"],
    "maxItems": lambda arg, v, *_: [] if not isinstance(v, list) or len(v) <= arg else ["long"],
    "uniqueItems": lambda arg, v, *_: (
        ["repeats"]
        if arg and isinstance(v, list) and len({json.dumps(x) for x in v}) < len(v)
        else []
    ),
    "prefixItems": lambda arg, v, root, at, _: [
        e
        for s, x in zip(arg, v if isinstance(v, list) else [], strict=False)
        for e in errors(s, x, root, at)
    ],
    "pattern": lambda arg, v, *_: (
        [] if not isinstance(v, str) or re.search(arg, v) else [f"{v!r} !~ {arg}"]
    ),
    "dependentSchemas": lambda arg, v, root, at, _: [
        e for k, s in arg.items() if k in _object(v) for e in errors(s, v, root, at)
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


# ---------------------------------------------------------------- schema == load, case by case

CASCADE_LOCAL = {"cascade": {"small": "local", "large": "local", "small_model": "small",
                             "large_model": "large", "threshold": 0.5}}  # fmt: skip


def with_input(step: Any) -> dict[str, Any]:
    return {"models": {"small": {"inputs": {"x": step}}}, "root": CASCADE_LOCAL}


def with_cascade(fields: dict[str, Any]) -> dict[str, Any]:
    return {"root": {"cascade": {**CASCADE_LOCAL["cascade"], **fields}}}


def with_remote(remote: Any) -> dict[str, Any]:
    return {"remotes": {"cloud": remote}, "root": {"remote": "cloud"}}


#: (file, accepted): every case is run through the schema and through ``edgecloud.load``.
AGREE: list[tuple[dict[str, Any], bool]] = [
    (with_input({"columns": [0, 3]}), True),
    (with_input({"columns": "0:4"}), True),
    (with_input({"columns": "2:"}), True),
    (with_input({"columns": " 0 : 8 : 2 "}), True),
    (with_input({"columns": "0:8:"}), True),
    (with_input({"columns": [-1]}), False),
    (with_input({"columns": [2**31]}), False),
    (with_input({"columns": [1, 1]}), False),
    (with_input({"columns": []}), False),
    (with_input({"columns": [0.0]}), False),
    (with_input({"columns": [True]}), False),
    (with_input({"columns": "-3:"}), False),
    (with_input({"columns": "0:4:0"}), False),
    (with_input({"columns": "0"}), False),
    (with_input({"columns": "a:b"}), False),
    (with_input({"columns": "0:1:2:3"}), False),
    (with_input({"columns": "0\t:4"}), False),
    (with_input({"resize": [2, 4]}), True),
    (with_input({"resize": [2, 4], "mode": "nearest"}), True),
    (with_input({"resize": [0, 4]}), False),
    (with_input({"resize": [4, 16385]}), False),
    (with_input({"resize": [1, 2, 3]}), False),
    (with_input({"resize": [4]}), False),
    (with_input({"mode": "area"}), False),
    (with_input({"mode": None}), False),
    (with_input({"resize": None, "mode": "area"}), False),
    (with_input({"window": 0}), False),
    (with_input({"cast": "BYTES"}), False),
    (with_remote({"url": "http://127.0.0.1:8000"}), True),
    (with_remote({"url": "https://x"}), True),
    (with_remote({"url": "grpc://127.0.0.1:8001"}), True),
    (with_remote({"url": "grpcs://x:443"}), True),
    (with_remote({"url": "ftp://x"}), False),
    (with_remote({"url": "127.0.0.1:8000"}), False),
    (with_remote({"url": "HTTP://x"}), False),
    (with_remote({"url": "http://x", "timeout_s": 0}), False),
    (with_remote({"url": "https://x:443/"}), True),
    (with_remote({"url": "http://[::1]:8000"}), True),
    (with_remote({"url": "http://my_svc.local:1"}), True),
    (with_remote({"url": "http://x:65535"}), True),
    (with_remote({"url": "http://127.0.0.1:99999"}), False),
    (with_remote({"url": "grpc://127.0.0.1:65536"}), False),
    (with_remote({"url": "http://x:0"}), False),
    (with_remote({"url": "http://x:08000"}), False),
    (with_remote({"url": "http://x:"}), False),
    (with_remote({"url": "http://x:port"}), False),
    (with_remote({"url": "http://:8000"}), False),
    (with_remote({"url": "http://"}), False),
    (with_remote({"url": "http://x:8000/v2"}), False),
    (with_remote({"url": "http://x:8000?a=1"}), False),
    (with_remote({"url": "http://x:8000#f"}), False),
    (with_remote({"url": "http://user:pw@x:8000"}), False),
    (with_remote({"url": "http://x y"}), False),
    (with_remote({"url": "http://x", "timeout_s": 3600}), True),
    (with_remote({"url": "http://x", "timeout_s": 3600.5}), False),
    (with_remote({"url": "http://x", "timeout_s": 1e300}), False),
    (with_remote({"url": "http://x", "timeout_s": -1}), False),
    (with_remote({"url": "http://x", "token_env": ""}), False),
    (with_cascade({"small_model": ""}), False),
    (with_cascade({"large_model": ""}), False),
    (with_cascade({"output": ""}), False),
    (with_cascade({"output": "p"}), True),
    ({"repository": "", "root": "local"}, False),
    ({"outbox": {"path": ""}, "root": "local"}, False),
    ({"outbox": {"path": "."}, "root": "local"}, False),
    ({"outbox": {"path": ".."}, "root": "local"}, False),
    ({"outbox": {"path": "q/"}, "root": "local"}, False),
    ({"outbox": {"path": "q/.."}, "root": "local"}, False),
    ({"outbox": {"path": "q/outbox.db"}, "root": "local"}, True),
    ({"outbox": {"path": ".outbox"}, "root": "local"}, True),
    ({"audit_log": "", "root": "local"}, False),
    ({"audit_log": "logs/", "root": "local"}, False),
    ({"audit_log": "audit.jsonl", "root": "local"}, True),
]

#: What load refuses and the schema cannot state: a slice whose stop is not above its
#: start (regular expressions cannot compare numbers), a slice index above 2^31 - 1,
#: a node naming a remote the file does not declare (the schema cannot relate a
#: string to another mapping's keys), and a file path naming an existing directory
#: (the schema cannot see the disk). ``edgecloud.load`` refuses each with its YAML path.
LOAD_ONLY: list[dict[str, Any]] = [
    with_input({"columns": "4:2"}),
    with_input({"columns": "4:0"}),
    with_input({"columns": "4:4"}),
    {"outbox": {"path": "a-directory"}, "root": "local"},
    {"audit_log": "a-directory", "root": "local"},
    with_input({"columns": "0:2147483648"}),
    {"root": "cloud"},
    {"remotes": {"cloud": {"url": "http://x"}}, "root": {"remote": "elsewhere"}},
]


def loads(tmp_path: Path, spec: dict[str, Any]) -> bool:
    import edgecloud
    from edgecloud.errors import ConfigError

    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump({"repository": str(tmp_path / "repo"), **spec}))
    try:
        edgecloud.load(path).close()
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize(("spec", "accepted"), AGREE)
def test_the_schema_and_load_agree(
    schema: dict[str, Any], tmp_path: Path, spec: dict[str, Any], accepted: bool
) -> None:
    assert (errors(schema, spec, schema) == []) is accepted, errors(schema, spec, schema)
    assert loads(tmp_path, spec) is accepted


@pytest.mark.parametrize("spec", LOAD_ONLY)
def test_what_only_load_can_refuse(schema: dict[str, Any], tmp_path: Path, spec: Any) -> None:
    assert errors(schema, spec, schema) == []
    (tmp_path / "a-directory").mkdir()
    assert not loads(tmp_path, spec)
