"""models.infer: batched embeddings + logits, failures reported, CUDA path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.backbones import build, eval_transform, resolve_weights
from models.head import softmax
from models.infer import embed_and_predict

SIZE = 32


def _files(tmp_path: Path, make_image, n: int = 7) -> list[Path]:  # noqa: ANN001
    return [make_image(tmp_path / f"{k}.png", k % 3, seed=k) for k in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_embeddings_are_the_penultimate_features(tmp_path: Path, make_image, workers: int) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = build("resnet18", 3, "none").eval()
    paths = _files(tmp_path, make_image)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    paths.insert(3, bad)
    tf = eval_transform(resolve_weights("resnet18", "none"), image_size=SIZE)
    inf = embed_and_predict(model, paths, transform=tf, batch_size=3, num_workers=workers)
    assert list(inf.errors) == [3]
    assert "not an image" in inf.errors[3] or "cannot decode" in inf.errors[3]
    assert inf.index.tolist() == [0, 1, 2, 4, 5, 6, 7]
    assert inf.embeddings.shape == (7, 512) and inf.embeddings.dtype == np.float32
    assert inf.logits.shape == (7, 3)
    np.testing.assert_allclose(inf.probs.sum(1), 1.0, rtol=1e-5)
    # the same numbers by hand: the body without fc, then fc
    from models.images import load_rgb

    x = torch.stack([tf(load_rgb(paths[i])) for i in inf.index])
    body = build("resnet18", 3, "none")
    body.load_state_dict(model.state_dict())
    fc = body.fc
    body.fc = nn.Identity()
    body.eval()
    with torch.no_grad():
        emb = body(x)
        np.testing.assert_allclose(inf.embeddings, emb.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(inf.logits, fc(emb).numpy(), rtol=1e-4, atol=1e-5)


def test_all_unreadable_gives_empty_arrays(tmp_path: Path) -> None:
    p = tmp_path / "x.png"
    p.write_bytes(b"")
    tf = eval_transform(resolve_weights("resnet18", "none"), image_size=SIZE)
    inf = embed_and_predict(build("resnet18", 2, "none"), [p], transform=tf, num_workers=0)
    assert inf.index.shape == (0,) and list(inf.errors) == [0]


def test_softmax_temperature() -> None:
    z = np.array([[2.0, 0.0], [0.0, 0.0]])
    assert softmax(z, 2.0)[0, 0] == pytest.approx(1 / (1 + np.exp(-1)))
    np.testing.assert_allclose(softmax(z)[1], [0.5, 0.5])


@pytest.mark.cuda
def test_cuda_bf16_channels_last_matches_cpu(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = build("resnet18", 3, "none").eval()
    cpu_state = {k: v.clone() for k, v in model.state_dict().items()}
    paths = _files(tmp_path, make_image, n=16)
    tf = eval_transform(resolve_weights("resnet18", "none"), image_size=64)
    gpu = embed_and_predict(model, paths, transform=tf, batch_size=8, num_workers=2, device="cuda")
    assert next(model.parameters()).is_cuda
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    ref_model = build("resnet18", 3, "none")
    ref_model.load_state_dict(cpu_state)
    cpu = embed_and_predict(ref_model, paths, transform=tf, batch_size=8, num_workers=0, device="cpu")
    assert gpu.embeddings.dtype == np.float32
    # bf16 keeps ~3 significant digits
    np.testing.assert_allclose(gpu.embeddings, cpu.embeddings, rtol=0.05, atol=0.05)
    assert (gpu.logits.argmax(1) == cpu.logits.argmax(1)).mean() >= 0.9
