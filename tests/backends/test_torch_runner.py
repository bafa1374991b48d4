"""The torch (GPU) serving path: parity with onnxruntime, clean refusal without CUDA."""

from __future__ import annotations

import numpy as np
import pytest

from edgecloud import InferRequest, LocalBackend, ModelLoadError, ModelRepository
from edgecloud.backends.torch_runner import TORCHSCRIPT_FILE, TorchRunner, cuda_available
from edgecloud.zoo import datasets

HAS_CUDA = cuda_available()


@pytest.mark.parametrize("model", ["digits-small", "digits-large"])
def test_torchscript_copy_matches_onnx(zoo_repo: ModelRepository, model: str) -> None:
    entry = zoo_repo.get(model)
    assert TORCHSCRIPT_FILE in entry.files  # hashed like every artefact
    runner = TorchRunner(entry.path / TORCHSCRIPT_FILE, ["pixels"], ["probabilities"], "cpu")
    x = datasets.digits("test").x[:32]
    (torch_out,) = runner(["probabilities"], {"pixels": x})
    with LocalBackend(zoo_repo) as local:
        onnx_out = local.infer(InferRequest(model, {"pixels": x})).outputs["probabilities"]
    np.testing.assert_allclose(torch_out, onnx_out, rtol=1e-4, atol=1e-6)


def test_read_only_inputs_are_accepted(zoo_repo: ModelRepository) -> None:
    entry = zoo_repo.get("digits-small")
    runner = TorchRunner(entry.path / TORCHSCRIPT_FILE, ["pixels"], ["probabilities"], "cpu")
    x = np.frombuffer(np.zeros(64, np.float32).tobytes(), np.float32).reshape(1, 64)
    assert not x.flags.writeable
    assert runner(["probabilities"], {"pixels": x})[0].shape == (1, 10)


def test_auto_without_cuda_stays_on_onnxruntime(zoo_repo: ModelRepository) -> None:
    with LocalBackend(zoo_repo, device="auto") as local:
        label = local.load("digits-small").label
    assert label.startswith("local-cuda:digits-small/" if HAS_CUDA else "local:digits-small/")


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_load_error(zoo_repo: ModelRepository) -> None:
    with (
        LocalBackend(zoo_repo, device="cuda") as local,
        pytest.raises(ModelLoadError, match="cannot run on cuda: no CUDA device"),
    ):
        local.load("digits-small")


def test_cuda_needs_a_torchscript_copy(zoo_repo: ModelRepository) -> None:
    with (
        LocalBackend(zoo_repo, device="cuda") as local,
        pytest.raises(ModelLoadError, match="cuda"),
    ):
        local.load("vad")  # shipped as ONNX only


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device visible to torch")
def test_cuda_path_matches_cpu(zoo_repo: ModelRepository) -> None:
    image = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    with LocalBackend(zoo_repo, device="cuda") as gpu, LocalBackend(zoo_repo) as cpu:
        on_gpu = gpu.infer(InferRequest("resnet18-like", {"image": image}))
        on_cpu = cpu.infer(InferRequest("resnet18-like", {"image": image}))
    assert on_gpu.trace.served_by.startswith("local-cuda:")
    np.testing.assert_allclose(
        on_gpu.outputs["logits"], on_cpu.outputs["logits"], rtol=2e-2, atol=2e-2
    )


def test_pinned_staging_is_cuda_only(zoo_repo: ModelRepository) -> None:
    entry = zoo_repo.get("digits-small")
    path = entry.path / TORCHSCRIPT_FILE
    runner = TorchRunner(path, ["pixels"], ["probabilities"], "cpu", pinned=True)
    assert not runner.pinned  # pinned host memory and streams mean nothing on the CPU
    x = datasets.digits("test").x[:4]
    plain = TorchRunner(path, ["pixels"], ["probabilities"], "cpu", pinned=False)
    np.testing.assert_array_equal(
        runner(["probabilities"], {"pixels": x})[0], plain(["probabilities"], {"pixels": x})[0]
    )


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device visible to torch")
def test_pinned_staging_matches_the_plain_path_from_several_threads(
    zoo_repo: ModelRepository,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    entry = zoo_repo.get("resnet18-like")
    path = entry.path / TORCHSCRIPT_FILE
    pinned = TorchRunner(path, ["image"], ["logits"], "cuda", pinned=True)
    plain = TorchRunner(path, ["image"], ["logits"], "cuda", pinned=False)
    assert pinned.pinned
    rng = np.random.default_rng(0)
    # sizes that grow and shrink, so each thread's pinned buffer is reused and regrown
    images = [rng.standard_normal((n, 3, 224, 224)).astype(np.float32) for n in (2, 8, 1, 4) * 3]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: pinned(["logits"], {"image": x})[0], images))
    for x, out in zip(images, got, strict=True):
        np.testing.assert_allclose(out, plain(["logits"], {"image": x})[0], rtol=1e-4, atol=1e-4)
