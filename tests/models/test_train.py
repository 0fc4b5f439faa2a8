"""models.train: fine-tuning on a tiny network, best epoch kept, temperature folding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms import v2 as T

from models.head import softmax
from models.infer import embed_and_predict
from models.train import fine_tune, fold_temperature, param_groups

SIZE = 24


class Tiny(nn.Module):
    """A conv net with torchvision's `fc` convention."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def _tf() -> T.Compose:
    return T.Compose([T.ToImage(), T.Resize((SIZE, SIZE)), T.ToDtype(torch.float32, scale=True)])


def test_fine_tune_learns_colours_and_keeps_best_epoch(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    # classes 0 and 2 of the synthetic drawer: red rectangles vs blue rectangles
    paths, labels = [], []
    for k in range(24):
        cls = k % 2
        paths.append(make_image(tmp_path / f"{k}.png", 2 * cls, seed=k))
        labels.append(cls)
    torch.manual_seed(0)
    model = Tiny(2)
    result = fine_tune(model, paths[:16], labels[:16], paths[16:], labels[16:], train_transform=_tf(),
                       eval_transform=_tf(), epochs=8, batch_size=8, lr_backbone=1e-2, lr_head=1e-2,
                       num_workers=0, progress=False, patience=None)
    accs = [h["val_acc"] for h in result.history]
    assert len(result.history) == 8 and all("loss" in h and "images_per_s" in h for h in result.history)
    assert result.best_epoch == int(np.argmax(accs)) + 1
    assert max(accs) >= 0.75
    assert not result.model.training
    inf = embed_and_predict(result.model, paths[16:], transform=_tf(), num_workers=0)
    np.testing.assert_allclose(inf.logits, result.val_logits, rtol=1e-4, atol=1e-5)
    assert (inf.logits.argmax(1) == np.array(labels[16:])).mean() == max(accs)


def test_param_groups_split_head_and_backbone() -> None:
    model = Tiny(3)
    head, body = param_groups(model, lr_head=1e-3, lr_backbone=1e-4)
    assert {id(p) for p in head["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert len(body["params"]) == 2 and body["lr"] == 1e-4


def test_fold_temperature_matches_scaled_softmax() -> None:
    torch.manual_seed(0)
    model = Tiny(3).eval()
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        before = model(x).numpy()
        fold_temperature(model, 2.5)
        after = model(x).numpy()
    np.testing.assert_allclose(softmax(after), softmax(before, 2.5), rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_cuda_fine_tune_amp_channels_last(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    from models.backbones import build

    paths = [make_image(tmp_path / f"{k}.png", 2 * (k % 2), seed=k) for k in range(16)]
    labels = [k % 2 for k in range(16)]
    model = build("resnet18", 2, "none")
    result = fine_tune(model, paths, labels, paths[:4], labels[:4], train_transform=_tf(), eval_transform=_tf(),
                       epochs=2, batch_size=8, device="cuda", num_workers=2, progress=False)
    assert next(result.model.parameters()).is_cuda
    assert result.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.isfinite([h["loss"] for h in result.history]).all()


def test_fine_tune_stops_early_and_reports_progress(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    paths = [make_image(tmp_path / f"{k}.png", 2 * (k % 2), seed=k) for k in range(12)]
    labels = [k % 2 for k in range(12)]
    seen: list[dict] = []
    # Nothing learns at lr 0: validation accuracy never improves after epoch 1.
    result = fine_tune(Tiny(2), paths[:8], labels[:8], paths[8:], labels[8:], train_transform=_tf(),
                       eval_transform=_tf(), epochs=10, batch_size=4, lr_backbone=0.0, lr_head=0.0,
                       num_workers=0, progress=False, patience=2, on_progress=seen.append,
                       train_weights=[1.0, 2.0] * 4)
    assert len(result.history) == 3 and result.best_epoch == 1
    assert len(seen) == 3 * 2  # two batches of four per epoch
    assert [(p["epoch"], p["batch"], p["batches"], p["epochs"]) for p in seen[:3]] == [(1, 1, 2, 10), (1, 2, 2, 10),
                                                                                        (2, 1, 2, 10)]
    assert seen[-1]["eta_s"] > 0 and seen[-1]["val_acc"] == result.history[1]["val_acc"]
    with pytest.raises(ValueError, match="train_weights"):
        fine_tune(Tiny(2), paths[:8], labels[:8], [], [], train_transform=_tf(), eval_transform=_tf(), epochs=1,
                  num_workers=0, progress=False, train_weights=[0.0] * 8)
