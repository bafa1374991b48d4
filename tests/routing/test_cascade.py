from __future__ import annotations

import numpy as np
import pytest

from edgecloud import (
    ConfigError,
    InferRequest,
    LocalBackend,
    ModelRepository,
    RemoteBackend,
    UnavailableError,
)
from edgecloud.backends.base import FunctionBackend, check_rows
from edgecloud.errors import InferenceError
from edgecloud.routing import Cascade, calibrate
from edgecloud.routing.confidence import (
    margin,
    max_probability,
    normalised_entropy,
    not_probabilities,
)
from edgecloud.zoo import datasets

from ..server.conftest import Server, free_port


def test_confidence_measures() -> None:
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])
    np.testing.assert_allclose(max_probability(probs), [1.0, 1 / 3, 0.6])
    np.testing.assert_allclose(margin(probs), [1.0, 0.0, 0.3], atol=1e-12)
    entropy = normalised_entropy(probs)
    assert entropy[0] == pytest.approx(1.0) and entropy[1] == pytest.approx(0.0, abs=1e-9)
    assert 0 < entropy[2] < 1


def cascade(repo: ModelRepository, large, threshold: float, **kw) -> Cascade:  # type: ignore[no-untyped-def]
    return Cascade(
        LocalBackend(repo), large, threshold=threshold,
        small_model="digits-small", large_model="digits-large", **kw,
    )  # fmt: skip


def test_confident_rows_stay_local_unsure_rows_escalate(
    zoo_repo: ModelRepository, zoo_server: Server
) -> None:
    test = datasets.digits("test")
    with LocalBackend(zoo_repo) as local:
        small = local.infer(InferRequest("digits-small", {"pixels": test.x})).outputs[
            "probabilities"
        ]
        large = local.infer(InferRequest("digits-large", {"pixels": test.x})).outputs[
            "probabilities"
        ]
    with cascade(zoo_repo, RemoteBackend(zoo_server.url), 0.9) as c:
        response = c.infer(InferRequest("digits", {"pixels": test.x}))
    unsure = small.max(axis=1) < 0.9
    expected = np.where(unsure[:, None], large, small)
    np.testing.assert_allclose(response.outputs["probabilities"], expected, rtol=1e-4, atol=1e-6)
    assert response.parameters["escalated_rows"] == int(unsure.sum())
    decisions = [s.reason for s in response.trace.spans if s.kind == "decision"]
    assert decisions[0].startswith(f"cascade:escalate {unsure.sum()}/{len(test)} rows")
    assert any(s.kind == "network" and s.bytes_up > 0 for s in response.trace.spans)


def test_a_confident_request_never_leaves(zoo_repo: ModelRepository) -> None:
    x = datasets.digits("test").x[:1]
    with cascade(zoo_repo, RemoteBackend(f"http://127.0.0.1:{free_port()}"), 0.0) as c:
        response = c.infer(InferRequest("digits", {"pixels": x}))
    assert response.trace.served_by.startswith("local:digits-small")
    assert "cascade:confident" in response.trace.spans[-1].reason


def test_unreachable_large_model_gives_the_small_answer_and_reports_it(
    zoo_repo: ModelRepository,
) -> None:
    failures: list[tuple[str, int]] = []
    x = datasets.digits("test").x[:20]

    def failed(req: InferRequest, resp: object, why: str) -> None:
        failures.append((why, len(req.inputs["pixels"])))

    dead = RemoteBackend(f"http://127.0.0.1:{free_port()}", timeout=1)
    with cascade(zoo_repo, dead, 1.0, on_escalation_failure=failed) as c:
        response = c.infer(InferRequest("digits", {"pixels": x}))
    assert response.outputs["probabilities"].shape == (20, 10)
    assert "cascade:escalation-failed:unavailable" in response.trace.spans[-1].reason
    assert failures == [("unavailable", 20)]


def test_audit_rate_escalates_some_confident_rows(zoo_repo: ModelRepository) -> None:
    x = datasets.digits("test").x
    with cascade(zoo_repo, LocalBackend(zoo_repo), 0.0, audit_rate=0.25, seed=1) as c:
        response = c.infer(InferRequest("digits", {"pixels": x}))
    share = response.parameters["escalated_rows"] / len(x)
    assert 0.15 < share < 0.35


def test_min_interval_spaces_escalations(zoo_repo: ModelRepository) -> None:
    x = datasets.digits("test").x[:50]
    with cascade(zoo_repo, LocalBackend(zoo_repo), 1.0, min_interval_s=60) as c:
        first = c.infer(InferRequest("digits", {"pixels": x}))
        second = c.infer(InferRequest("digits", {"pixels": x}))
    assert first.parameters["escalated_rows"] == 50
    assert "rate-limited" in second.trace.spans[-1].reason


def test_cascade_settings_are_checked(zoo_repo: ModelRepository) -> None:
    with pytest.raises(ConfigError, match="threshold"):
        cascade(zoo_repo, LocalBackend(zoo_repo), 1.5)
    with pytest.raises(ConfigError, match="unknown confidence"):
        cascade(zoo_repo, LocalBackend(zoo_repo), 0.5, confidence_measure="vibes")


def test_calibration_meets_its_target_on_validation_data(zoo_repo: ModelRepository) -> None:
    val = datasets.digits("val")
    with LocalBackend(zoo_repo) as local:
        small = local.infer(InferRequest("digits-small", {"pixels": val.x})).outputs[
            "probabilities"
        ]
        large = local.infer(InferRequest("digits-large", {"pixels": val.x})).outputs[
            "probabilities"
        ]
    point = calibrate(small, large, val.y, target_relative_accuracy=0.995)
    assert point.relative_accuracy >= 0.995 and point.escalation_rate < 0.5
    capped = calibrate(small, large, val.y, max_escalation_rate=0.05)
    assert capped.escalation_rate <= 0.05
    with pytest.raises(ConfigError, match=r"must be in \(0, 1\], got 1.5"):
        calibrate(small, large, val.y, target_relative_accuracy=1.5)
    with pytest.raises(ConfigError, match="the large model is right on none of the"):
        calibrate(small, np.roll(large, 1, axis=1), val.y, target_relative_accuracy=0.9)
    with pytest.raises(ConfigError, match="exactly one"):
        calibrate(small, large, val.y)


def test_unavailable_is_what_a_dead_remote_raises() -> None:
    with (
        RemoteBackend(f"http://127.0.0.1:{free_port()}", timeout=1) as remote,
        pytest.raises(UnavailableError),
    ):
        remote.infer(InferRequest("digits-large", {"pixels": np.zeros((1, 64), np.float32)}))


def test_a_deferral_that_cannot_be_stored_keeps_the_small_answer(
    zoo_repo: ModelRepository, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The outbox's disk is full: the caller still gets the small model's answer, and
    the trace says the escalation was neither answered nor deferred."""
    from edgecloud.routing import OutboxStorageError

    def refuse(request, response, why) -> None:  # type: ignore[no-untyped-def]
        raise OutboxStorageError("outbox o.db: database or disk is full")

    unreachable = RemoteBackend(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    x = datasets.digits("test").x[:16]
    with cascade(zoo_repo, unreachable, 1.0, on_escalation_failure=refuse) as c:
        response = c.infer(InferRequest("digits", {"pixels": x}))
    with LocalBackend(zoo_repo) as local:
        small = local.infer(InferRequest("digits-small", {"pixels": x})).outputs["probabilities"]
    np.testing.assert_array_equal(response.outputs["probabilities"], small)
    (decision,) = [s.reason for s in response.trace.spans if s.kind == "decision"]
    assert "escalation-failed:unavailable" in decision and "not deferred" in decision
    assert "disk is full" in decision


SMALL = np.array([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.8, 0.1, 0.1], [0.34, 0.33, 0.33]])


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        (np.array([[0.0, 1.0, 0.0]]), "[1, 3] for 2 input rows"),  # one row for two
        (np.zeros((3, 3)), "[3, 3] for 2 input rows"),  # more rows than escalated
        (np.zeros((2, 4)), "[2, 4], but the rows it replaces have shape"),
        (np.zeros((2, 3, 1)), "[2, 3, 1], but the rows it replaces"),
        (np.float64(0.5), "[] for 2 input rows"),
    ],
)
def test_a_large_answer_of_the_wrong_shape_is_never_broadcast_into_the_rows(
    answer: np.ndarray, shown: str
) -> None:
    """The large model answers 2 escalated rows with the wrong row count or trailing dims:
    before, numpy broadcast one row over all escalated rows (silently wrong answers); now
    the escalation fails as the large model's fault and the small answer stands."""
    small = FunctionBackend(lambda inputs: {"probabilities": SMALL.copy()}, name="small")
    large = FunctionBackend(lambda inputs: {"probabilities": answer}, name="large")
    told = []
    c = Cascade(
        small, large, threshold=0.5,
        on_escalation_failure=lambda request, response, why: told.append(why),
    )  # fmt: skip
    response = c.infer(InferRequest("m", {"x": np.zeros((4, 2), np.float32)}))
    np.testing.assert_array_equal(response.outputs["probabilities"], SMALL)
    (decision,) = [s.reason for s in response.trace.spans if s.kind == "decision"]
    assert "escalation-failed" in decision and "large large:" in decision and shown in decision
    assert told  # the escalation is reported, not silently dropped


def test_a_large_answer_of_the_right_shape_replaces_the_escalated_rows() -> None:
    answer = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    small = FunctionBackend(lambda inputs: {"probabilities": SMALL.copy()}, name="small")
    large = FunctionBackend(lambda inputs: {"probabilities": answer}, name="large")
    response = Cascade(small, large, threshold=0.5).infer(
        InferRequest("m", {"x": np.zeros((4, 2), np.float32)})
    )
    np.testing.assert_array_equal(response.outputs["probabilities"][[1, 3]], answer)
    np.testing.assert_array_equal(response.outputs["probabilities"][[0, 2]], SMALL[[0, 2]])


def test_check_rows_names_the_source_and_shapes() -> None:
    with pytest.raises(InferenceError, match=r"remote:x: output 'y' has shape \[1, 3\] for 3"):
        check_rows(np.zeros((1, 3)), 3, output="y", source="remote:x")
    check_rows(np.zeros((3, 3)), 3, output="y", source="remote:x", like=np.zeros((5, 3)))


ROWS = np.array([[0.9, 0.1], [0.5, 0.5]])


@pytest.mark.parametrize(
    ("probs", "problem"),
    [
        (np.array([[2.0, -1.0], [0.3, 0.1]]), r"outside \[0, 1\]"),  # logits
        (np.log(ROWS), r"outside \[0, 1\]"),  # log-probabilities
        (np.array([[0.9, 0.8], [0.1, 0.2]]), "row 0 sums to 1.7"),  # independent sigmoids
        (np.array([[0.2, 0.2], [0.5, 0.5]]), "row 0 sums to 0.4"),
        (np.array([[np.nan, 0.5], [0.5, 0.5]]), "not finite"),
        (np.array([[np.inf, 0.0], [0.5, 0.5]]), "not finite"),
        (np.array([[1, 0], [0, 1]], dtype=np.int64), "int64 values"),
    ],
)
@pytest.mark.parametrize("measure", ["max_prob", "margin", "entropy"])
def test_a_cascade_refuses_to_score_what_is_not_probabilities(
    probs: np.ndarray, problem: str, measure: str
) -> None:
    """Before: logits routed (entropy/max_prob of anything is a number): rows escalated or
    kept by noise. Now the request fails naming the output and what to set."""
    small = FunctionBackend(lambda inputs: {"logits": probs}, name="small")
    large = FunctionBackend(lambda inputs: {"logits": ROWS}, name="large")
    c = Cascade(small, large, threshold=0.5, output="logits", confidence_measure=measure)
    with pytest.raises(ConfigError, match=rf"output 'logits' of 'm' is not class prob.*{problem}"):
        c.infer(InferRequest("m", {"x": np.zeros((2, 2), np.float32)}))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_rounded_probabilities_of_every_float_type_pass(dtype: type) -> None:
    logits = np.random.default_rng(1).normal(size=(64, 1000)) * 4
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (e / e.sum(axis=1, keepdims=True)).astype(dtype)
    assert not_probabilities(probs) == ""
    assert not_probabilities(np.zeros((0, 3), dtype)) == ""
