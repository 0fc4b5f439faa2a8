"""models/explain.py: every method on mobilenet_v2 (real weights, real photos) and resnet18
(random init); the caller's model is never changed; overlays and class-average maps."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from models.explain import (
    COLORBAR_WIDTH,
    METHOD_NAMES,
    UnknownMethodError,
    attribute,
    average_image,
    average_maps,
    explain,
    find_target_layer,
    overlay,
    preprocess,
)
from tests.conftest import shared_images

# Small inputs and few steps keep the whole file within a few seconds of CPU per method.
SIZE = 112
FAST = {"ig_steps": 4, "internal_batch_size": 4, "occlusion_window": 28, "occlusion_stride": 28}


@pytest.fixture(scope="module")
def mobilenet() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    from tests.conftest import TORCH_HOME

    if not (TORCH_HOME / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth").is_file():
        pytest.skip("mobilenet_v2 weights not found under ../shared/torch")
    return torchvision.models.get_model("mobilenet_v2", weights="IMAGENET1K_V1").eval()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.get_model("resnet18", weights=None, num_classes=5).eval()


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    from tests.conftest import DATASET

    if not DATASET.is_dir():
        pytest.skip(f"{DATASET} not found")
    picked = shared_images(1)
    return [Image.open(picked[c][0]).convert("RGB") for c in ("hat", "shoes")]


def check_map(heat: np.ndarray, shape: tuple[int, int]) -> None:
    assert heat.shape == shape
    assert heat.dtype == np.float32
    assert np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.max() == pytest.approx(1.0)
    assert heat.std() > 0.01, "heatmap is (nearly) constant"


@pytest.mark.slow
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_on_mobilenet_real_photos(mobilenet, photos, method) -> None:
    for photo in photos:
        heat = attribute(mobilenet, photo, method, size=SIZE, **FAST)
        check_map(heat, (photo.height, photo.width))


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_on_resnet18(resnet18, make_image, tmp_path, method) -> None:
    photo = Image.open(make_image(tmp_path / "a.png", 1, size=(150, 120)))
    result = explain(resnet18, photo, method, target=2, size=SIZE, **FAST)
    assert result.target == 2 and result.method == method
    check_map(result.heatmap, (120, 150))


def test_target_class_changes_gradcam(mobilenet, photos) -> None:
    photo = photos[0]
    top = explain(mobilenet, photo, size=SIZE)
    other = explain(mobilenet, photo, target=(top.target + 500) % 1000, size=SIZE)
    again = explain(mobilenet, photo, target=top.target, size=SIZE)
    np.testing.assert_allclose(top.heatmap, again.heatmap, atol=1e-5)
    assert np.abs(top.heatmap - other.heatmap).mean() > 0.02


@pytest.mark.parametrize("method", ["gradcam", "guided"])
def test_default_target_is_the_top_class(mobilenet, photos, method) -> None:
    x = preprocess(photos[1], size=SIZE)
    with torch.no_grad():
        top = int(mobilenet(x).argmax(1)[0])
    found = explain(mobilenet, x, method)
    assert found.target == top
    np.testing.assert_allclose(found.heatmap, attribute(mobilenet, x, method, target=top), atol=1e-5)


def test_tensor_input_gives_map_at_tensor_size(resnet18) -> None:
    x = torch.randn(3, 64, 80)
    check_map(attribute(resnet18, x, "gradcam", target=0), (64, 80))
    with pytest.raises(ValueError, match="one image"):
        attribute(resnet18, torch.randn(2, 3, 64, 64), "gradcam")


def _model_state(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "inplace": {n: m.inplace for n, m in model.named_modules() if hasattr(m, "inplace")},
        "types": {n: type(m) for n, m in model.named_modules()},
        "grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     for m in model.modules()),
        "training": model.training,
    }


def test_callers_model_is_unchanged(mobilenet, photos) -> None:
    x = preprocess(photos[1], size=SIZE)
    with torch.no_grad():
        before_out = mobilenet(x)
    before = _model_state(mobilenet)
    assert any(before["inplace"].values()), "torchvision's mobilenet_v2 should use in-place ReLU6"
    for method in METHOD_NAMES:
        attribute(mobilenet, photos[1], method, size=SIZE, **FAST)
    after = _model_state(mobilenet)
    assert after["inplace"] == before["inplace"]
    assert after["types"] == before["types"]
    assert after["grad"] == before["grad"]
    assert after["hooks"] == before["hooks"] == 0
    assert after["training"] == before["training"]
    for k, v in before["tensors"].items():
        assert torch.equal(v, after["tensors"][k]), k
    with torch.no_grad():
        assert torch.equal(mobilenet(x), before_out)


def test_changed_weights_refresh_the_attribution_copy(make_image, tmp_path) -> None:
    import torchvision

    torch.manual_seed(1)
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=3).eval()
    photo = Image.open(make_image(tmp_path / "b.png", 2, size=(96, 96)))
    first = attribute(model, photo, "gradcam", target=1, size=96)
    with torch.no_grad():  # an in-place weight update, as an optimiser step would do
        for p in model.layer4.parameters():
            p.mul_(-1.5)
    second = attribute(model, photo, "gradcam", target=1, size=96)
    assert np.abs(first - second).mean() > 0.01


def test_find_target_layer() -> None:
    import torchvision

    assert find_target_layer(torchvision.models.get_model("resnet18", weights=None)) == "layer4"
    assert find_target_layer(torchvision.models.get_model("mobilenet_v2", weights=None)) == "features.18"
    tiny = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2),
    )
    assert find_target_layer(tiny) == "3"
    wrapped = nn.Sequential()
    wrapped.add_module("backbone", nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    wrapped.add_module("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)))
    assert find_target_layer(wrapped) == "backbone"
    heat = attribute(wrapped, torch.randn(1, 3, 32, 32), "gradcam", target=1)
    assert heat.shape == (32, 32)


def test_unknown_method_lists_the_valid_ones(resnet18) -> None:
    with pytest.raises(UnknownMethodError, match="gradcam, ig, guided, occlusion"):
        attribute(resnet18, torch.randn(3, 32, 32), "lime")


def test_concurrent_calls_agree(resnet18, make_image, tmp_path) -> None:
    photo = Image.open(make_image(tmp_path / "c.png", 3, size=(100, 80)))
    expected = attribute(resnet18, photo, "gradcam", target=4, size=SIZE)
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(
        attribute(resnet18, photo, "gradcam", target=4, size=SIZE))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-5)


def test_overlay_has_photo_size_plus_colour_bar(make_image, tmp_path) -> None:
    photo = Image.open(make_image(tmp_path / "d.png", 0, size=(130, 90)))
    heat = np.linspace(0, 1, 45 * 65, dtype=np.float32).reshape(45, 65)  # other size: resized
    out = overlay(photo, heat)
    assert out.size == (130 + COLORBAR_WIDTH, 90) and out.mode == "RGB"
    bare = overlay(photo, heat, colorbar=False)
    assert bare.size == (130, 90)
    pixels = np.asarray(bare, dtype=np.int16)
    assert np.abs(pixels - np.asarray(photo.convert("RGB"), dtype=np.int16)).mean() > 5  # coloured
    bar = np.asarray(out)[:, 130:]
    assert bar.std() > 10  # the colour bar is drawn, not blank
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        overlay(photo, np.zeros((2, 3, 4)))


def test_average_maps_and_image() -> None:
    a = np.zeros((10, 8), dtype=np.float32)
    a[:5] = 1.0
    b = np.zeros((20, 16), dtype=np.float32)
    b[:, :8] = 1.0
    mean = average_maps([a, b], size=(10, 8))
    assert mean.shape == (10, 8) and mean.dtype == np.float32
    assert mean.max() == pytest.approx(1.0)
    assert mean[0, 0] > mean[9, 7]  # top-left lies in both maps' hot regions, bottom-right in none
    assert mean[9, 7] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="no heatmaps"):
        average_maps([])
    ims = [Image.new("RGB", (30, 20), (200, 0, 0)), Image.new("RGB", (60, 40), (0, 0, 100))]
    avg = average_image(ims, size=(10, 8))
    assert avg.size == (8, 10)
    assert tuple(np.asarray(avg)[5, 4]) == (100, 0, 50)


def test_the_attribution_copy_computes_what_the_model_does(mobilenet, photos) -> None:
    """The private copy folds BatchNorm into the convolutions and runs channels-last on CPU: a
    faster network with the same outputs and the same Grad-CAM."""
    from models.explain import _copy_for_attribution, find_target_layer

    clone = _copy_for_attribution(mobilenet)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in clone.modules())  # all folded (mobilenet_v2)
    x = preprocess(photos[0], size=SIZE)
    with torch.no_grad():
        torch.testing.assert_close(clone(x.contiguous(memory_format=torch.channels_last)), mobilenet(x),
                                   rtol=1e-3, atol=1e-3)
    from captum.attr import LayerGradCam

    layer = find_target_layer(mobilenet)
    plain = LayerGradCam(mobilenet, mobilenet.get_submodule(layer)).attribute(x, target=3)
    folded = LayerGradCam(clone, clone.get_submodule(layer)).attribute(
        x.contiguous(memory_format=torch.channels_last), target=3)
    torch.testing.assert_close(folded, plain, rtol=1e-2, atol=1e-4)
