"""Deployment files: built into real backend trees, mistakes named by YAML path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import edgecloud
from edgecloud import ConfigError, InferRequest, ModelRepository, RequestContext, Sensitivity
from edgecloud.zoo import datasets

from .server.conftest import free_port


def deployment(tmp_path: Path, zoo_repo: ModelRepository, **overrides: object) -> Path:
    spec = {
        "repository": str(zoo_repo.root),
        "remotes": {"cloud": {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 1}},
        "audit_log": "audit.jsonl",
        "outbox": {"path": "outbox.db", "max_items": 100},
        "root": {
            "guard": {
                "rules": {"personal": "local"},
                "inner": {
                    "cascade": {
                        "small": "local",
                        "large": {"prefer_remote": {"remote": "cloud", "local": "local"}},
                        "small_model": "digits-small",
                        "large_model": "digits-large",
                        "threshold": 0.9,
                        "defer_failed_escalations": False,
                    }
                },
            }
        },
    } | overrides
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_deployment_builds_and_routes(zoo_repo: ModelRepository, tmp_path: Path) -> None:
    x = datasets.digits("test").x[:30]
    with edgecloud.load(deployment(tmp_path, zoo_repo)) as tree:
        response = tree.infer(InferRequest("digits", {"pixels": x}))
        personal = tree.infer(InferRequest(
            "digits", {"pixels": x}, context=RequestContext(sensitivity=Sensitivity.PERSONAL)
        ))  # fmt: skip
    assert response.outputs["probabilities"].shape == (30, 10)
    reasons = [s.reason for s in response.trace.spans if s.kind == "decision"]
    assert reasons[0] == "guard:public → may leave"
    assert any(r.startswith("fallback:unavailable") for r in reasons)  # the cloud is down
    personal_reasons = [s.reason for s in personal.trace.spans if s.kind == "decision"]
    assert personal_reasons[0] == "guard:personal → stays on the device"
    assert any(r.startswith("fallback:privacy") for r in personal_reasons)
    # nothing was deferred: loading and routing created no queue; nor does serving a
    # tree that never defers; serving one that does opens it before the first request
    assert not list(tmp_path.glob("outbox.db*"))
    edgecloud.load(deployment(tmp_path, zoo_repo), ready=True).close()
    assert not list(tmp_path.glob("outbox.db*"))
    root = yaml.safe_load(deployment(tmp_path, zoo_repo).read_text())["root"]
    root["guard"]["inner"]["cascade"]["defer_failed_escalations"] = True
    edgecloud.load(deployment(tmp_path, zoo_repo, root=root), ready=True).close()
    assert (tmp_path / "outbox.db").exists()


def test_failed_escalations_are_deferred_to_the_outbox(
    zoo_repo: ModelRepository, tmp_path: Path
) -> None:
    path = deployment(tmp_path, zoo_repo, root={"cascade": {
        "small": "local", "large": "cloud", "small_model": "digits-small",
        "large_model": "digits-large", "threshold": 1.0, "defer_failed_escalations": True,
    }})  # fmt: skip
    with edgecloud.load(path) as tree:
        tree.infer(InferRequest("digits", {"pixels": datasets.digits("test").x[:5]}))
        assert tree.outbox is not None
        (item,) = tree.outbox.items()
        result = tree.drain_outbox()  # through the tree's own client: the cloud is still down
    assert item.kind == "escalation" and item.model == "digits-large"
    assert result is not None and result.remaining == 1 and "unreachable" in str(result.stopped_by)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"root": {"cascade": {"small": "local", "large": "local", "threshold": 2}}},
         "root.cascade.threshold: Input should be less than or equal to 1"),
        ({"root": {"guard": {"inner": {"teleport": {}}}}},
         "root.guard.inner: unknown node 'teleport'"),
        ({"root": {"prefer_remote": {"remote": "moon", "local": "local"}}},
         "root.prefer_remote.remote: unknown remote 'moon' (remotes: cloud)"),
        ({"root": {"prefer_remote": {"remote": "cloud"}}},
         "root.prefer_remote.local: Field required"),
        ({"root": {"cascade": {"small": "local", "large": "local", "threshold": 0.5,
                               "defer_failed_escalations": True}}, "outbox": None},
         "declare an outbox first"),
        ({"remotes": {"cloud": {"url": "http://x", "token_env": "EDGECLOUD_NO_SUCH_VAR"}},
          "root": "cloud"}, "remotes.cloud.token_env: $EDGECLOUD_NO_SUCH_VAR is not set"),
        ({"remotes": {"cloud": {"uri": "http://x"}}, "root": "local"},
         "remotes.cloud.url: Field required"),
        ({"root": ["local", "cloud"]}, "root: a node is 'local'"),
    ],
)  # fmt: skip
def test_mistakes_name_their_yaml_path(
    zoo_repo: ModelRepository, tmp_path: Path, overrides: dict, message: str
) -> None:
    path = deployment(tmp_path, zoo_repo, **overrides)
    with pytest.raises(ConfigError) as info:
        edgecloud.load(path)
    assert str(path) in info.value.message and message in info.value.message


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        edgecloud.load(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("root: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        edgecloud.load(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        edgecloud.load(tmp_path / "list.yaml")
    (tmp_path / "noroot.yaml").write_text("repository: x\n")
    with pytest.raises(ConfigError, match="root: Field required"):
        edgecloud.load(tmp_path / "noroot.yaml")


def test_calibrate_command_writes_the_threshold(zoo_repo: ModelRepository, tmp_path: Path) -> None:
    path = deployment(tmp_path, zoo_repo)
    val = datasets.digits("val")  # the demo's data, passed as any user's file would be
    np.savez(tmp_path / "val.npz", pixels=val.x, labels=val.y)
    before = path.read_text()
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "calibrate", "-d", str(path),
         "--data", str(tmp_path / "val.npz"), "--target", "0.995"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    threshold = yaml.safe_load(path.read_text())["root"]["guard"]["inner"]["cascade"]["threshold"]
    assert 0 < threshold < 1 and threshold != 0.9
    assert f"wrote threshold {threshold!r}" in result.stdout
    assert path.read_text() == before.replace("threshold: 0.9", f"threshold: {threshold!r}")
    gone = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "calibrate", "-d", str(path), "--dataset",
         "digits", "--target", "0.99"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert gone.returncode == 2 and "--dataset" in gone.stderr  # the zoo is not product data
    assert np.isfinite(threshold)


def test_fastest_node(zoo_repo: ModelRepository, tmp_path: Path) -> None:
    path = deployment(tmp_path, zoo_repo, root={"fastest": {"paths": ["local", "cloud"]}})
    with edgecloud.load(path) as tree:
        response = tree.infer(
            InferRequest("digits-small", {"pixels": datasets.digits("test").x[:2]})
        )
    assert response.trace.spans[0].reason.startswith("fastest:")
    with pytest.raises(ConfigError, match=r"root.fastest.paths: List should have at least 2"):
        edgecloud.load(deployment(tmp_path, zoo_repo, root={"fastest": {"paths": ["local"]}}))
