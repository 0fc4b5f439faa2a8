"""Full fine-tuning of a torchvision classifier on labelled image files.

The recipe known to work for fashion photos: augmentation (flip, rotation 10 degrees) on the
training images only, cross-entropy, Adam with lr 1e-3 for the new head and a lower lr for the
pretrained backbone, and what fine-tuning on a catalogue needs besides: class-balanced sampling
(every class drawn equally often, so a rare class is not drowned), a weight per label (how far it
is trusted) in the loss, and early stopping on the validation slice (the best epoch is kept; the
run stops after `patience` epochs without improvement). On CUDA bf16 autocast + channels_last.
Runs on CPU too (slowly) so it is testable. ``on_progress`` is told after every batch where the
run stands (epoch, batch, images/s, ETA) so a caller can show it without waiting for the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm.auto import tqdm

from models.backbones import find_final_linear
from models.infer import (
    ImageFiles,
    autocast,
    collate,
    default_device,
    default_workers,
    embed_and_predict,
    worker_init,
)

LR_HEAD = 1e-3
# The pretrained layers move ten times slower than the new head (they already see well).
LR_BACKBONE = 1e-4
GPU_BATCH = 128
CPU_BATCH = 32
# Epochs without a better validation accuracy before stopping (the best epoch is kept anyway).
DEFAULT_PATIENCE = 2
# Label smoothing of the cross-entropy: none by default. Measured on the shared sample
# (bench/finetune.py, CPU, 3 epochs), 0.1 together with a cosine decay of the learning rate
# ended at holdout accuracy 0.868 against 0.887 for the plain recipe: kept as an option only.
LABEL_SMOOTHING = 0.0


@dataclass
class FineTuneResult:
    """model: the best epoch's weights (eval mode); history: per-epoch dicts (loss, acc, val_acc,
    seconds, images_per_s); val_logits: (n_val_ok, c) of the best epoch, val_index: their
    positions in the validation inputs."""

    model: nn.Module
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    val_logits: np.ndarray | None = None
    val_index: np.ndarray | None = None


def param_groups(model: nn.Module, *, lr_head: float, lr_backbone: float) -> list[dict]:
    """Two Adam groups: the final Linear at ``lr_head``, everything else at ``lr_backbone``."""
    _, head = find_final_linear(model)
    head_ids = {id(p) for p in head.parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    return [{"params": list(head.parameters()), "lr": lr_head}, {"params": backbone, "lr": lr_backbone}]


def fine_tune(
    model: nn.Module,
    train_paths: Sequence[str | Path],
    train_labels: Sequence[int],
    val_paths: Sequence[str | Path],
    val_labels: Sequence[int],
    *,
    train_transform: Callable,
    eval_transform: Callable,
    epochs: int,
    batch_size: int | None = None,
    lr_head: float = LR_HEAD,
    lr_backbone: float = LR_BACKBONE,
    device: torch.device | str | None = None,
    num_workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
    train_weights: Sequence[float] | None = None,
    balanced: bool = True,
    patience: int | None = DEFAULT_PATIENCE,
    on_progress: Callable[[dict], None] | None = None,
    label_smoothing: float = LABEL_SMOOTHING,
) -> FineTuneResult:
    """Fine-tune ``model`` (whose final Linear already has the right outputs) and return the
    epoch with the best validation accuracy (the last epoch when there is no validation set).

    train_labels, val_labels: ints into the model's outputs; train_weights: (n_train,) > 0, the
    loss weight of each label (None: all 1). ``balanced`` samples each class equally often (with
    replacement, one epoch = n_train draws); ``patience`` stops after that many epochs without a
    better validation accuracy (None: run every epoch). ``on_progress(info)`` gets a dict after
    every batch: epoch, epochs, batch, batches, images_per_s, elapsed_s, eta_s, val_acc (last).
    ``label_smoothing``: the cross-entropy's (0: plain cross-entropy).
    Files that fail to decode are skipped (they were checked at import; this only guards against
    files changed since).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if len(train_paths) == 0:
        raise ValueError("no training images")
    device = torch.device(device) if device is not None else default_device()
    cuda = device.type == "cuda"
    bs = batch_size or (GPU_BATCH if cuda else CPU_BATCH)
    workers = default_workers() if num_workers is None else num_workers
    torch.manual_seed(seed)
    model = model.to(device, memory_format=torch.channels_last) if cuda else model.to(device)
    y_np = np.asarray(train_labels, dtype=np.int64)
    y_train = torch.as_tensor(y_np)
    y_val = np.asarray(val_labels, dtype=np.int64)
    w_np = np.ones(len(y_np)) if train_weights is None else np.asarray(train_weights, dtype=np.float64)
    if w_np.shape != y_np.shape or not np.all(w_np > 0):
        raise ValueError("train_weights must be (n_train,) and positive")
    w_train = torch.as_tensor(w_np, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if balanced:
        counts = np.bincount(y_np)
        sampler = WeightedRandomSampler(torch.as_tensor(1.0 / counts[y_np], dtype=torch.float64),
                                        num_samples=len(y_np), replacement=True, generator=generator)
    loader = DataLoader(
        ImageFiles(train_paths, train_transform), batch_size=bs, shuffle=sampler is None, sampler=sampler,
        num_workers=workers, collate_fn=collate, pin_memory=cuda, drop_last=len(train_paths) > bs,
        worker_init_fn=worker_init if workers else None, persistent_workers=workers > 0,
        generator=generator,
    )
    optimizer = torch.optim.Adam(param_groups(model, lr_head=lr_head, lr_backbone=lr_backbone))
    loss_fn = nn.CrossEntropyLoss(reduction="none", label_smoothing=label_smoothing)  # weighted per label below
    best_acc, best_epoch, best_state = -1.0, 0, None
    best_val: tuple[np.ndarray, np.ndarray] | None = None
    history: list[dict] = []
    run_started = time.perf_counter()
    batches = len(loader)
    done_batches = 0
    for epoch in range(1, epochs + 1):
        model.train()
        started = time.perf_counter()
        seen = correct = 0
        loss_sum = 0.0
        bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", unit="batch", disable=not progress, leave=False)
        for batch_no, (index, images, _errors) in enumerate(bar, 1):
            if not len(index):
                continue
            x = images.to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y_train[index].to(device, non_blocking=True)
            w = w_train[index].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                logits = model(x)
                loss = (loss_fn(logits.float(), y) * w).sum() / w.sum()
            loss.backward()
            optimizer.step()
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            done_batches += 1
            if on_progress is not None:
                on_progress(_progress(epoch, epochs, batch_no, batches, done_batches, seen,
                                      time.perf_counter() - started, time.perf_counter() - run_started,
                                      history[-1].get("val_acc") if history else None))
        bar.close()
        seconds = time.perf_counter() - started
        record = {"epoch": epoch, "loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1),
                  "seconds": round(seconds, 2), "images_per_s": round(seen / seconds, 2) if seconds else 0.0}
        val_acc = None
        if len(val_paths):
            inf = embed_and_predict(model, val_paths, transform=eval_transform, batch_size=bs,
                                    num_workers=workers, device=device)
            val_acc = float((inf.logits.argmax(1) == y_val[inf.index]).mean()) if len(inf.index) else 0.0
            record["val_acc"] = val_acc
        history.append(record)
        if progress:
            tqdm.write(f"epoch {epoch}/{epochs}: loss {record['loss']:.4f} acc {record['acc']:.3f}"
                       + (f" val_acc {val_acc:.3f}" if val_acc is not None else "")
                       + f" ({record['images_per_s']:.1f} img/s)")
        score = val_acc if val_acc is not None else float(epoch)  # no validation: keep the last
        if score > best_acc:
            best_acc, best_epoch = score, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            best_val = (inf.logits, inf.index) if len(val_paths) else None
        elif patience is not None and val_acc is not None and epoch - best_epoch >= patience:
            if progress:
                tqdm.write(f"early stop: no better validation accuracy for {patience} epochs (best: epoch {best_epoch})")
            break
    model.load_state_dict(best_state)
    model.eval()
    result = FineTuneResult(model, best_epoch, history)
    if best_val is not None:
        result.val_logits, result.val_index = best_val
    return result


def _progress(epoch: int, epochs: int, batch: int, batches: int, done: int, seen: int, epoch_s: float,
              elapsed_s: float, val_acc: float | None) -> dict:
    """Where a run stands; the ETA assumes every remaining epoch runs (early stopping may end it
    sooner) and costs what the batches so far cost."""
    remaining = epochs * batches - done
    return {"epoch": epoch, "epochs": epochs, "batch": batch, "batches": batches,
            "images_per_s": round(seen / epoch_s, 2) if epoch_s > 0 else 0.0, "elapsed_s": round(elapsed_s, 1),
            "eta_s": round(elapsed_s / done * remaining, 1) if done else None, "val_acc": val_acc}


def fold_temperature(model: nn.Module, temperature: float) -> nn.Module:
    """Divide the final Linear by ``temperature`` (in place) so ``softmax(model(x))`` is calibrated."""
    _, linear = find_final_linear(model)
    with torch.no_grad():
        linear.weight.div_(temperature)
        if linear.bias is not None:
            linear.bias.div_(temperature)
    return model

