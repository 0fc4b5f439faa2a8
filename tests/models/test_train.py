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
from models.train import NO_LABEL, fine_tune, fold_temperature, param_groups

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
    # The rates drop to a tenth after two thirds of the epochs (LR_DECAY_AT), both groups alike.
    assert [h["lr_head"] for h in result.history] == pytest.approx([1e-2] * 5 + [1e-3] * 3)
    assert [h["lr_backbone"] for h in result.history] == pytest.approx([1e-2] * 5 + [1e-3] * 3)
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


def _logits_around_fold(n_out: int, *args, **kwargs) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN002, ANN003
    """A tiny network's logits on fixed inputs before and after `fold_temperature(*args, **kwargs)`."""
    torch.manual_seed(0)
    model = Tiny(n_out).eval()
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        before = model(x).numpy()
        fold_temperature(model, *args, **kwargs)
        return before, model(x).numpy()


def test_fold_temperature_matches_scaled_softmax() -> None:
    before, after = _logits_around_fold(3, 2.5)
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
                       train_weights=[1.0, 2.0] * 4, lr_decay_at=None)
    assert len(result.history) == 3 and result.best_epoch == 1
    assert len(seen) == 3 * 2  # two batches of four per epoch
    assert [(p["epoch"], p["batch"], p["batches"], p["epochs"]) for p in seen[:3]] == [(1, 1, 2, 10), (1, 2, 2, 10),
                                                                                        (2, 1, 2, 10)]
    assert seen[-1]["eta_s"] > 0 and seen[-1]["val_acc"] == result.history[1]["val_acc"]
    # With a rate decay after epoch 3, patience waits for one epoch at the lower rate (epoch 4).
    decayed = fine_tune(Tiny(2), paths[:8], labels[:8], paths[8:], labels[8:], train_transform=_tf(),
                        eval_transform=_tf(), epochs=10, batch_size=4, lr_backbone=0.0, lr_head=0.0,
                        num_workers=0, progress=False, patience=2, lr_decay_at=0.3)
    assert len(decayed.history) == 4 and decayed.best_epoch == 1
    with pytest.raises(ValueError, match="train_weights"):
        fine_tune(Tiny(2), paths[:8], labels[:8], [], [], train_transform=_tf(), eval_transform=_tf(), epochs=1,
                  num_workers=0, progress=False, train_weights=[0.0] * 8)


class MeanColour(nn.Module):
    """A network that sees only each photo's mean colour: learns colour fields in a few steps."""

    def __init__(self, n_outputs: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 16), nn.ReLU())
        self.fc = nn.Linear(16, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def test_fine_tune_with_one_output_block_per_field(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    """Two independent label fields of one photo on one network: outputs 0-1 warm or cool
    (red, yellow / blue, cyan), outputs 2-3 dark or light (red, blue / yellow, cyan); a third of
    the photos have no dark/light label (-1)."""
    fill = [[0, 3], [2, 5]]  # conftest.COLOURS indices by [warm/cool][dark/light]
    paths, warm, light = [], [], []
    for k in range(36):
        w, li = k % 2, (k // 2) % 2
        paths.append(make_image(tmp_path / f"{k}.png", 0, seed=k, colour=fill[w][li]))
        warm.append(w)
        light.append(li if k % 3 else NO_LABEL)
    y = np.stack([warm, light], axis=1)
    # Mostly white photos: centred and scaled so that a few steps separate their mean colours.
    tf = T.Compose([_tf(), T.Normalize((0.9,) * 3, (0.1,) * 3)])
    torch.manual_seed(0)
    result = fine_tune(MeanColour(4), paths[:24], y[:24], paths[24:], y[24:], train_transform=tf, eval_transform=tf,
                       epochs=6, batch_size=8, lr_backbone=3e-2, lr_head=3e-2, num_workers=0, progress=False,
                       patience=None, outputs=[2, 2], train_weights=np.where(y[:24] >= 0, 1.0, 0.0))
    assert result.val_logits.shape == (12, 4)
    for h in result.history:
        per = h["val_acc_per_output"]
        assert len(per) == 2 and h["val_acc"] == pytest.approx(np.mean(per))
    best = result.history[result.best_epoch - 1]
    assert best["val_acc"] == max(h["val_acc"] for h in result.history) >= 0.9
    # Each block is scored on the photos labelled for it alone, with its own outputs.
    has = y[24:, 1] >= 0
    assert (result.val_logits[has, 2:].argmax(1) == y[24:, 1][has]).mean() == best["val_acc_per_output"][1]
    assert (result.val_logits[:, :2].argmax(1) == y[24:, 0]).mean() == best["val_acc_per_output"][0]
    with pytest.raises(ValueError, match="outside their output block"):
        fine_tune(Tiny(4), paths[:4], [[0, 2]] * 4, [], [], train_transform=_tf(),
                  eval_transform=_tf(), epochs=1, num_workers=0, progress=False, outputs=[2, 2])
    with pytest.raises(ValueError, match="must add up to"):
        fine_tune(Tiny(4), paths[:4], y[:4], [], [], train_transform=_tf(), eval_transform=_tf(), epochs=1,
                  num_workers=0, progress=False, outputs=[2, 1])
    with pytest.raises(ValueError, match="at least one output block"):
        fine_tune(Tiny(4), paths[:4], [[0, -1], [-1, -1], [1, 1], [0, 0]], [], [],
                  train_transform=_tf(), eval_transform=_tf(), epochs=1, num_workers=0, progress=False, outputs=[2, 2])


def test_balance_draws_the_first_blocks_classes_and_weighs_the_others_labels() -> None:
    from models.train import _balanced

    single_draw, single_weight = _balanced(np.array([[0], [0], [1]]))
    np.testing.assert_allclose(single_draw, [0.5, 0.5, 1.0])  # one block: 1 / class size, as always
    np.testing.assert_allclose(single_weight, 1.0)
    # Block 1 follows block 0 (a body zone from the category): classes 0, 1 -> zone 0, class 2 -> zone 1;
    # the last sample has no block-0 label (one more group of draws).
    y = np.array([[0, 0], [0, 0], [1, 0], [2, 1], [NO_LABEL, 1]])
    draw, weight = _balanced(y)
    np.testing.assert_allclose(draw, [0.5, 0.5, 1.0, 1.0, 1.0])  # four groups drawn equally
    p = draw / draw.sum()
    assert np.allclose(weight[:, 0], 1.0)
    # Zone 0 gets half the draws, zone 1 half as well: balanced already, weights 1.
    np.testing.assert_allclose(weight[:, 1], 1.0)
    y[4, 1] = 0  # now zone 0 gets 3/4 of the draws, zone 1 a quarter
    _, weight = _balanced(y)
    np.testing.assert_allclose(weight[[0, 1, 2, 4], 1], 0.5 / 0.75)
    np.testing.assert_allclose(weight[3, 1], 0.5 / 0.25)
    mass = [(p * weight[:, 1])[y[:, 1] == c].sum() for c in (0, 1)]
    assert mass[0] == pytest.approx(mass[1])  # each zone weighs the same in expectation


def test_fold_temperature_per_output_block() -> None:
    before, after = _logits_around_fold(5, [2.0, 0.5], outputs=[3, 2])
    np.testing.assert_allclose(softmax(after[:, :3]), softmax(before[:, :3], 2.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(softmax(after[:, 3:]), softmax(before[:, 3:], 0.5), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="as many temperatures"):
        fold_temperature(Tiny(5), [2.0], outputs=[3, 2])
