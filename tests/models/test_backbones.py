"""models.backbones: names, final-layer surgery, weights resolution, transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from models import backbones
from models.backbones import (
    BackboneError,
    WeightsError,
    build,
    embedding_dim,
    eval_transform,
    find_final_linear,
    replace_final_linear,
    resolve_weights,
    train_transform,
)

# backbone -> (where its last Linear sits, embedding size)
FAMILIES = {
    "resnet18": ("fc", 512), "resnet34": ("fc", 512), "resnet50": ("fc", 2048), "resnet101": ("fc", 2048),
    "resnet152": ("fc", 2048), "mobilenet_v2": ("classifier.1", 1280), "efficientnet_b0": ("classifier.1", 1280),
    "vgg16": ("classifier.6", 4096), "convnext_tiny": ("classifier.2", 768), "vit_b_16": ("heads.head", 768),
    "densenet121": ("classifier", 1024), "mobilenet_v3_small": ("classifier.3", 1024),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_final_linear_found_and_replaced_for_each_family(name: str) -> None:
    with torch.device("meta"):  # no memory, no init cost: only the structure matters here
        model = torchvision.models.get_model(name, weights=None)
        where, dim = FAMILIES[name]
        found, linear = find_final_linear(model)
        assert (found, linear.in_features) == (where, dim)
        replace_final_linear(model, nn.Linear(dim, 7))
    assert find_final_linear(model)[1].out_features == 7
    assert model.get_submodule(where).out_features == 7


def test_build_gives_new_head_and_runs() -> None:
    model = build("resnet18", 3, "none").eval()
    assert embedding_dim(model) == 512
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3)


def test_build_keeps_own_head_without_num_classes() -> None:
    model = build("resnet18", None, "none")
    assert find_final_linear(model)[1].out_features == 1000


def test_unsupported_classifier_is_a_clear_error() -> None:
    with torch.device("meta"):
        model = torchvision.models.get_model("squeezenet1_0", weights=None)
    with pytest.raises(BackboneError, match="no Linear"):
        find_final_linear(model)


def test_unknown_backbone_lists_names() -> None:
    with pytest.raises(BackboneError, match="resnet50"):
        resolve_weights("resnet5O", "none")


def test_unknown_weights_name_lists_the_valid_ones() -> None:
    with pytest.raises(WeightsError, match="IMAGENET1K_V2"):
        resolve_weights("resnet50", "IMAGENET2K")


def test_missing_cache_names_the_file_and_options_when_offline(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("ACTIVE_OFFLINE", "1")

    def no_network(*_a, **_k):  # noqa: ANN002, ANN003
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(backbones, "download_weights", no_network)
    with pytest.raises(WeightsError) as err:
        build("resnet50", 10, "IMAGENET1K_V1")
    text = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in text
    assert "--weights none" in text and ".pth" in text and "--offline" in text
    monkeypatch.delenv("ACTIVE_OFFLINE")
    with pytest.raises(WeightsError, match="offline"):  # the argument wins over the environment
        resolve_weights("resnet50", "IMAGENET1K_V1", offline=True)


def test_missing_weights_download_through_torchvision_into_torch_home(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("ACTIVE_OFFLINE")
    calls = []

    def fake_download(url: str, *, progress: bool, check_hash: bool) -> dict:
        # what torch.hub.load_state_dict_from_url does: the file lands in $TORCH_HOME/hub/checkpoints
        calls.append((url, progress, check_hash))
        dest = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.get_model("resnet18", weights=None).state_dict(), dest)
        return {}

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", fake_download)
    spec = resolve_weights("resnet18", "IMAGENET1K_V1")
    assert calls == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", True, True)]
    assert spec.kind == "enum" and spec.path == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert resolve_weights("resnet18", "IMAGENET1K_V1").path == spec.path and len(calls) == 1  # cached now

    def unreachable(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise OSError("Name or service not known")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", unreachable)
    with pytest.raises(WeightsError, match=r"could not be downloaded into .*resnet34-b627a593\.pth.*not known"):
        resolve_weights("resnet34", "IMAGENET1K_V1")


def test_offline_flag_reaches_the_weights(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from active.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("ACTIVE_OFFLINE")

    def no_network(*_a, **_k):  # noqa: ANN002, ANN003
        raise AssertionError("tried to download")

    monkeypatch.setattr(backbones, "download_weights", no_network)
    root = tmp_path / "p"
    assert main(["init", str(root), "--classes", "a,b", "--backbone", "resnet18"]) == 0
    capsys.readouterr()
    assert main(["--offline", "--project", str(root), "score", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "resnet18-f37072fd.pth" in err and "offline" in err


def test_missing_pth_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        build("resnet18", 3, tmp_path / "nope.pth")


def test_pth_round_trip_and_head_resize(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = build("resnet18", 3, "none")
    path = tmp_path / "ckpt.pth"
    torch.save({"model": src.state_dict()}, path)  # torchvision references' layout
    same = build("resnet18", 3, path)
    for (k, a), b in zip(src.state_dict().items(), same.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    other = build("resnet18", 5, path)  # the backbone is kept, the head is new
    assert find_final_linear(other)[1].out_features == 5
    assert torch.equal(other.conv1.weight, src.conv1.weight)


def test_pth_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save(build("resnet18", 3, "none").state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit"):
        build("mobilenet_v2", 3, path)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        build("resnet18", 3, bad)


def test_transforms_follow_image_size() -> None:
    spec = resolve_weights("resnet18", "none")
    im = Image.new("RGB", (80, 50), (255, 255, 255))
    assert eval_transform(spec, image_size=64)(im).shape == (3, 64, 64)
    x = train_transform(spec, image_size=48)(im)
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32


def test_enum_weights_load_from_cache_with_their_preset(mobilenet_weights: Path) -> None:
    spec = resolve_weights("mobilenet_v2", "IMAGENET1K_V1")
    assert spec.kind == "enum" and spec.path.resolve() == mobilenet_weights.resolve()
    model = build("mobilenet_v2", 10, spec)
    assert find_final_linear(model)[1].out_features == 10
    assert model.features[0][0].weight.abs().sum() > 0
    im = Image.new("RGB", (300, 400), (200, 10, 10))
    assert eval_transform(spec)(im).shape == (3, 224, 224)


def test_a_network_starts_from_a_linear_probe_with_its_logits() -> None:
    from models.backbones import set_final_linear
    from models.head import fit_head_cv

    rng = np.random.default_rng(0)
    model = build("mobilenet_v2", 3, "none")
    dim = find_final_linear(model)[1].in_features
    x = rng.normal(2.0, 3.0, (60, dim)).astype(np.float32)  # not standardised: the fold must undo it
    y = np.repeat(np.arange(3), 20)
    head = fit_head_cv(x, y, 3).head
    set_final_linear(model, *head.as_linear())
    with torch.no_grad():
        got = find_final_linear(model)[1](torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(got, head.logits(x), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="cannot start from"):
        set_final_linear(model, np.zeros((4, dim), np.float32), np.zeros(4, np.float32))


def test_one_output_block_starts_from_a_probe_and_can_be_cut_out() -> None:
    from models.backbones import keep_outputs, output_blocks, set_final_linear

    assert output_blocks([3, 2]) == [(0, 3), (3, 5)]
    model = build("mobilenet_v2", 5, "none").eval()
    dim = find_final_linear(model)[1].in_features
    before = find_final_linear(model)[1].weight.detach().clone()
    w, b = np.ones((2, dim), np.float32), np.full(2, 0.5, np.float32)
    set_final_linear(model, w, b, start=3)
    after = find_final_linear(model)[1]
    assert torch.equal(after.weight[:3], before[:3]) and torch.equal(after.weight[3:], torch.ones(2, dim))
    with pytest.raises(ValueError, match="at output 4"):
        set_final_linear(model, w, b, start=4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        keep_outputs(model, 3, 5)
        part = model(x)
    assert find_final_linear(model)[1].out_features == 2
    torch.testing.assert_close(part, full[:, 3:])
