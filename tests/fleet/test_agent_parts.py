"""The agent's parts on their own: the token bucket, the link policy, the health check."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from edgecloud.backends.local import LocalBackend
from edgecloud.errors import ConfigError, LinkNotAllowedError
from edgecloud.fleet.download import LinkPolicy, TokenBucket
from edgecloud.fleet.health import HealthPolicy, check_health
from edgecloud.repository import ModelRepository

from .agent_fixtures import classifier_config, classifier_onnx


def test_token_bucket_holds_the_average_rate() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    bucket = TokenBucket(1000.0, burst_bytes=100, clock=lambda: now[0], sleep=sleep)
    for _ in range(50):
        bucket.take(100)
    assert now[0] == pytest.approx(4.9)  # 5000 bytes at 1000 B/s, the first 100 free
    assert TokenBucket(None).take(10**9) == 0.0


@pytest.mark.parametrize("rate", [0.0, -5.0, float("nan"), float("inf")])
def test_token_bucket_refuses_a_nonsense_rate(rate: float) -> None:
    with pytest.raises(ConfigError, match="bandwidth"):
        TokenBucket(rate)


def test_metered_links_are_refused_only_when_told() -> None:
    LinkPolicy(metered_ok=True, link=lambda: "cellular").check()
    LinkPolicy(metered_ok=False, link=lambda: "wifi").check()
    with pytest.raises(LinkNotAllowedError, match="cellular"):
        LinkPolicy(metered_ok=False, link=lambda: "cellular").check()


def test_env_link(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLOUD_LINK", " Metered ")
    with pytest.raises(LinkNotAllowedError):
        LinkPolicy(metered_ok=False).check()


def _npz(**arrays: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def test_unlabelled_samples_compare_by_cosine_to_the_previous_version(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    for version, model in (
        (1, classifier_onnx(1)),
        (2, classifier_onnx(2)),
        (3, classifier_onnx(3, permute=True)),
    ):
        repo.add_version("clf", model, config=classifier_config(), version=version,
                         extra_files={"samples.npz": _npz(x=x)})  # fmt: skip
    local = LocalBackend(repo)
    one, two, permuted = (local.open("clf", v) for v in (1, 2, 3))
    close = check_health(two, previous=one)
    assert close.ok and close.cosine is not None and close.cosine > 0.999
    far = check_health(permuted, previous=one, policy=HealthPolicy(min_cosine=0.99))
    assert not far.ok and "cosine" in far.detail
    alone = check_health(two)
    assert alone.ok and "no labels" in alone.detail


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "cannot read"), ("", "on one line"), ("  \n", "on one line"), ("a\nb", "on one line"),
     (b"\xff\xfe", "cannot read")],
)  # fmt: skip
def test_a_bad_token_file_is_an_error_naming_the_setting(
    tmp_path: Path, content: str | bytes | None, match: str
) -> None:
    from edgecloud.fleet.http_auth import resolve_token

    path = tmp_path / "token"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=f"updates.token_file: .*{match}"):
        resolve_token(None, path)
    with pytest.raises(ConfigError, match=f"--token-file: .*{match}"):
        resolve_token(path, None)


def test_the_token_precedence_is_flag_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgecloud.fleet.http_auth import TOKEN_ENV, resolve_token

    (tmp_path / "flag").write_text("from-flag\n")
    (tmp_path / "file").write_text("from-file\n")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert resolve_token(None, None) is None
    assert resolve_token(None, tmp_path / "file") == "from-file"
    monkeypatch.setenv(TOKEN_ENV, " from-env ")
    assert resolve_token(None, tmp_path / "file") == "from-env"
    assert resolve_token(tmp_path / "flag", tmp_path / "file") == "from-flag"
