"""The edge path's config reader (no pydantic, no PyYAML) answers as the pydantic path does.

For every input: either both raise ModelLoadError with the same message, or the
lean dataclass equals the pydantic model's twin. And the lean reader must
actually settle the plain configs edgecloud writes (else it would be a slow
detour to pydantic, not a lean path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecloud import ModelRepository
from edgecloud._config_files import Loader
from edgecloud._edge_config import (
    UNSURE,
    EdgeModelConfig,
    lean_config,
    parse_plain_yaml,
    read_config,
)
from edgecloud.errors import ModelLoadError

PATH = Path("/repo/m/config.yaml")

BASE: dict[str, Any] = {
    "name": "m",
    "platform": "onnxruntime_onnx",
    "max_batch_size": 8,
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    "labels": ["a", "b", "c"],
    "version_policy": {"kind": "latest", "count": 1, "versions": []},
    "dynamic_batching": None,
    "description": "a model",
    "metrics": {"acc": 0.5},
    "metadata": {"seed": "0"},
}


def both(text: str) -> tuple[Any, Any]:
    """(lean result or error message, pydantic result as dataclass or error message)."""
    out = []
    for lean in (True, False):
        try:
            config = read_config(text, "m", PATH, lean=lean)
            out.append(config if lean else EdgeModelConfig.from_model(config))  # type: ignore[arg-type]
        except ModelLoadError as exc:
            out.append(("error", exc.message))
    return out[0], out[1]


def test_zoo_configs_are_read_lean_and_equal(zoo_repo: ModelRepository) -> None:
    for name in zoo_repo.model_names():
        if zoo_repo.is_triton(name):
            continue
        text = (zoo_repo.root / name / "config.yaml").read_text()
        assert lean_config(parse_plain_yaml(text)) is not None, name  # settled without pydantic
        assert zoo_repo.config(name, lean=True) == EdgeModelConfig.from_model(zoo_repo.config(name))


def test_repository_lean_entry_matches(repo: ModelRepository) -> None:
    lean, full = repo.get("affine", lean=True), repo.get("affine")
    assert isinstance(lean.config, EdgeModelConfig)
    assert lean.config == EdgeModelConfig.from_model(full.config)
    assert (lean.version, lean.files) == (full.version, full.files)


BAD_CONFIGS: dict[str, Any] = {
    "unknown datatype": {"inputs": [{"name": "x", "datatype": "FP8", "shape": [4]}]},
    "zero dim": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [0]}]},
    "dim -2": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]},
    "huge dim": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2**63]}]},
    "string dim": {"inputs": [{"name": "x", "datatype": "FP32", "shape": ["4"]}]},
    "bool dim": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [True]}]},
    "float dim": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4.0]}]},
    "duplicate inputs": {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}] * 2,
    },
    "extra spec key": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "z": 1}]},
    "extra key": {"colour": "red"},
    "bounds on BYTES": {
        "inputs": [{"name": "x", "datatype": "BYTES", "shape": [4], "min_value": 0}]
    },
    "min above max": {
        "inputs": [{"name": "x", "datatype": "INT64", "shape": [4], "min_value": 3, "max_value": 1}]
    },
    "empty allowed": {
        "inputs": [{"name": "x", "datatype": "INT64", "shape": [4], "allowed_values": []}]
    },
    "inf bound": {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "max_value": float("inf")}]
    },
    "nan bound": {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "min_value": float("nan")}]
    },
    "bound over 64 bits": {
        "inputs": [{"name": "x", "datatype": "UINT64", "shape": [4], "max_value": 2**64}]
    },
    "negative batch": {"max_batch_size": -1},
    "batch over int32": {"max_batch_size": 2**31},
    "batch as string": {"max_batch_size": "8"},
    "batch as bool": {"max_batch_size": True},
    "policy kind": {"version_policy": {"kind": "newest"}},
    "policy count 0": {"version_policy": {"kind": "latest", "count": 0}},
    "policy versions null": {"version_policy": {"kind": "specific", "versions": None}},
    "policy null": {"version_policy": None},
    "batching delay": {"dynamic_batching": {"max_queue_delay_us": -1}},
    "batching sizes": {"dynamic_batching": {"preferred_batch_sizes": [0]}},
    "labels not strings": {"labels": [1, 2]},
    "metadata not strings": {"metadata": {"seed": 0}},
    "metrics bool": {"metrics": {"acc": True}},
    "metrics string": {"metrics": {"acc": "high"}},
    "description null": {"description": None},
    "platform": {"platform": "tensorrt_plan"},
    "no inputs": {"inputs": None},
    "name mismatch": {"name": "other"},
    "name int": {"name": 5},
    "metric over float range": {"metrics": {"acc": 10**400}},
    "metric big int": {"metrics": {"acc": 2**60}},
}


#: Cases pydantic's lax mode accepts, converted ("8" -> 8, True -> 1): the lean
#: reader declines them and returns pydantic's answer.
COERCED = {
    "string dim",
    "float dim",
    "bool dim",
    "metrics bool",
    "metric big int",
    "batch as bool",
    "batch as string",
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_configs_fail_alike(case: str) -> None:
    data = {**BASE, **BAD_CONFIGS[case]}
    lean, full = both(yaml.safe_dump(data, sort_keys=False))
    assert lean == full
    if case not in COERCED:
        assert isinstance(lean, tuple), lean


def test_a_5000_digit_number_is_a_clear_error() -> None:
    """Python refuses to convert it (4300+ digits): a ModelLoadError, not a traceback."""
    text = yaml.safe_dump(BASE, sort_keys=False).replace("  - 4\n", f"  - {'9' * 5000}\n", 1)
    lean, full = both(text)
    assert lean == full
    assert isinstance(lean, tuple) and "4300 digits" in lean[1], lean


GOOD_CONFIGS: dict[str, Any] = {
    "plain": {},
    "bounds": {
        "inputs": [
            {"name": "ids", "datatype": "INT64", "shape": [-1], "min_value": 0, "max_value": 9},
            {"name": "sr", "datatype": "INT64", "shape": [1], "allowed_values": [8000, 16000]},
            {"name": "f", "datatype": "FP32", "shape": [2], "min_value": -0.5, "max_value": 1.5},
        ]
    },
    "no labels": {"labels": None},
    "batching": {"dynamic_batching": {"max_queue_delay_us": 0, "preferred_batch_sizes": [4, 8]}},
    "specific": {"version_policy": {"kind": "specific", "versions": [1, 3]}},
    "defaults omitted": {"version_policy": {}, "metrics": {}, "metadata": {}},
    "int metric": {"metrics": {"count": 3}},
    "quoted strings": {"labels": ["yes", "no", "0", "1.5", "null", "it's", "a: b", "#x"]},
    "unicode": {"description": "Größe — 大小", "labels": ["ä", "ö"]},
}


@pytest.mark.parametrize("case", sorted(GOOD_CONFIGS))
def test_good_configs_read_alike(case: str) -> None:
    data = {**BASE, **GOOD_CONFIGS[case]}
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=case == "unicode")
    lean, full = both(text)
    assert isinstance(lean, EdgeModelConfig), lean
    assert lean == full


def test_plain_configs_are_settled_without_pydantic() -> None:
    """(Non-ASCII text is settled when written as UTF-8; safe_dump's default escapes it
    in double quotes, which the lean reader leaves to PyYAML.)"""
    for case, fields in GOOD_CONFIGS.items():
        text = yaml.safe_dump({**BASE, **fields}, sort_keys=False, allow_unicode=True)
        assert lean_config(parse_plain_yaml(text)) is not None, case


SNIPPETS = [
    "a: yes", "a: on", "a: Off", "a: y", "a: 0x1F", "a: 0o17", "a: 017", "a: 1e3", "a: 1_000",
    "a: 2001-12-14", "a: ~", "a: null", "a: NULL", "a: 'it''s'", "a: b: c", "a:b", "a:\tb",
    "- - 1", "a: &x 1", "a: *x", "a: !!str 1", "a: 1\na: 2", "a: 1\x85b: 2", "a: .inf",
    "a: .5", "a: 1.", "a: +1", "a: -0", "a: 1.5e-3", "a: 1.0e+3", "a: -1", "a: [1, 2]",
    "a: {b: 1}", "a: []", "a: {}", "a: |\n  text", "a: >\n  text", "a: 'x\n  y'",
    "a: long\n  continued", "---\na: 1", "a: 1\n...", "%YAML 1.1\n---\na: 1", "a: \"x\"",
    "a: x # c", "# c\na: 1", "a:\n- 1\n- 2", "a:\n  - 1\n  - 2", "a:\n  b: 1\n c: 2",
    "a:\n    b: 1\n  c: 2", "- a: 1\n  b: 2\n- c", "a: True", "a: FALSE", "<<: {a: 1}",
    "a: =", "a: x: y", "a: x:", "a: @x", "a: `x", "a: %x", "a: ?x", "a: x,y", "a: 'x'y'",
    "\ufeffa: 1", "a: 1\r\nb: 2", "a: \x7f", "a: 12:30", "a: 1:20:30", "a: 0b101",
]  # fmt: skip


@pytest.mark.parametrize("text", SNIPPETS)
def test_yaml_subset_agrees_with_pyyaml_or_declines(text: str) -> None:
    mine = parse_plain_yaml(text)
    if mine is UNSURE:
        return
    assert mine == yaml.load(text, Loader=Loader)


_ALPHABET = "äß\u00a0\u3000 \n-:#'\"[]{}&*!|>%@`,.0123456789eEabnoxyYtruTRUfalsFALSNul~_\t+\x85"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=_ALPHABET, max_size=40))
def test_yaml_subset_never_disagrees_on_random_text(text: str) -> None:
    mine = parse_plain_yaml(text)
    if mine is UNSURE:
        return
    assert mine == yaml.load(text, Loader=Loader)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
_docs = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_docs)
def test_yaml_subset_reads_what_safe_dump_writes(doc: Any) -> None:
    text = yaml.safe_dump(doc, sort_keys=False)
    mine = parse_plain_yaml(text)
    if mine is not UNSURE:
        assert mine == yaml.load(text, Loader=Loader)


_number = st.one_of(st.integers(-3, 3), st.floats(-3, 3))
_spec = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "y", "z"]),
        "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "FP8"]),
        "shape": st.lists(st.integers(-2, 5), max_size=3),
    },
    optional={
        "min_value": _number,
        "max_value": _number,
        "allowed_values": st.lists(st.integers(-3, 3), max_size=2),
    },
)
_policy = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.sampled_from(["latest", "all", "specific", "x"]),
        "count": st.integers(0, 3),
        "versions": st.lists(st.integers(0, 3), max_size=2),
    },
)
_batching = st.fixed_dictionaries(
    {},
    optional={
        "max_queue_delay_us": st.integers(-1, 9),
        "preferred_batch_sizes": st.lists(st.integers(0, 9)),
    },
)
_config = st.fixed_dictionaries(
    {
        "name": st.just("m"),
        "inputs": st.lists(_spec, max_size=2),
        "outputs": st.lists(_spec, min_size=1, max_size=2),
    },
    optional={
        "max_batch_size": st.integers(-1, 9),
        "labels": st.one_of(st.none(), st.lists(st.sampled_from(["a", "yes", "1"]))),
        "version_policy": _policy,
        "dynamic_batching": st.one_of(st.none(), _batching),
        "metrics": st.dictionaries(st.sampled_from(["a", "b"]), st.floats(-1, 1)),
        "metadata": st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["0", "x"])),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_config)
def test_random_configs_read_alike(data: dict[str, Any]) -> None:
    lean, full = both(yaml.safe_dump(data, sort_keys=False))
    assert lean == full
