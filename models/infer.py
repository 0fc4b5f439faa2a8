"""Batched inference over image files: penultimate embeddings and logits.

Eval transforms only (the caller passes them; never augmentation), a DataLoader with workers that
decode with `models.images.load_rgb`, `torch.inference_mode`, and on CUDA bf16 autocast +
channels_last. A file that cannot be decoded is reported with its reason and never stops the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from models.backbones import find_final_linear
from models.head import softmax
from models.images import ImageError, load_rgb

DEFAULT_BATCH_SIZE = 64
# Decoding workers; more than this rarely helps one GPU and costs memory.
MAX_WORKERS = 8


def default_workers() -> int:
    return max(0, min(MAX_WORKERS, os.cpu_count() or 1))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ImageFiles(Dataset):
    """paths[i] -> (i, tensor (3, H, W) or None, error or None)."""

    def __init__(self, paths: Sequence[str | Path], transform: Callable) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, self.transform(load_rgb(self.paths[i])), None
        except ImageError as exc:
            return i, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a transform failing on one odd file must not stop the run
            return i, None, f"cannot transform: {type(exc).__name__}: {exc}"


@dataclass
class Batch:
    """One batch of a pool: rows ``index`` of the input, their outputs, and the failures.

    index: (b,) int64 positions in ``paths``; embeddings: (b, d) float32; logits: (b, c) float32;
    errors: position -> reason for files that could not be used.
    """

    index: np.ndarray
    embeddings: np.ndarray
    logits: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)


def collate(samples: list[tuple[int, torch.Tensor | None, str | None]]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    ok = [(i, x) for i, x, _ in samples if x is not None]
    errors = {i: e for i, x, e in samples if x is None}
    index = torch.tensor([i for i, _ in ok], dtype=torch.int64)
    images = torch.stack([x for _, x in ok]) if ok else torch.empty(0)
    return index, images, errors


def worker_init(_: int) -> None:
    torch.set_num_threads(1)  # each decoding worker is one core; the model owns the others


@contextmanager
def capture_embeddings(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the input of the model's final Linear (the embedding) on each forward."""
    _, linear = find_final_linear(model)
    seen: list[torch.Tensor] = []
    handle = linear.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Eval mode on ``device``; channels_last on CUDA (faster convolutions with autocast)."""
    model.eval()
    if device.type == "cuda":
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


def autocast(device: torch.device):  # noqa: ANN201
    """bf16 autocast on CUDA, nothing on CPU (CPU bf16 is slower on most machines)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def iter_batches(
    model: nn.Module,
    paths: Sequence[str | Path],
    *,
    transform: Callable,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Iterator[Batch]:
    """Yield `Batch` results in input order, one per DataLoader batch (failures included)."""
    device = torch.device(device) if device is not None else default_device()
    workers = default_workers() if num_workers is None else num_workers
    model = prepare(model, device)
    loader = DataLoader(
        ImageFiles(paths, transform), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=collate, pin_memory=device.type == "cuda",
        worker_init_fn=worker_init if workers else None,
        prefetch_factor=4 if workers else None, persistent_workers=False,
    )
    bar = tqdm(total=len(paths), unit="img", desc="scoring", disable=not progress, smoothing=0.1)
    try:
        with torch.inference_mode(), capture_embeddings(model) as seen:
            for index, images, errors in loader:
                emb = np.zeros((0, 0), np.float32)
                logits = np.zeros((0, 0), np.float32)
                if len(index):
                    x = images.to(device, non_blocking=True)
                    if device.type == "cuda":
                        x = x.contiguous(memory_format=torch.channels_last)
                    seen.clear()
                    with autocast(device):
                        out = model(x)
                    emb = seen[-1].flatten(1).float().cpu().numpy()
                    logits = out.float().cpu().numpy()
                bar.update(len(index) + len(errors))
                yield Batch(index.numpy(), emb, logits, errors)
    finally:
        bar.close()


@dataclass
class Inference:
    """embeddings: (n_ok, d) float32; logits, probs: (n_ok, c) float32; index: (n_ok,) positions
    of those rows in the input; errors: position -> reason for the files that failed."""

    index: np.ndarray
    embeddings: np.ndarray
    logits: np.ndarray
    errors: dict[int, str]

    @property
    def probs(self) -> np.ndarray:
        return softmax(self.logits)


def embed_and_predict(
    model: nn.Module,
    paths: Sequence[str | Path],
    *,
    transform: Callable,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Inference:
    """Run ``model`` over image files: embeddings (n_ok, d) and logits (n_ok, c), float32.

    Files that cannot be decoded are left out of the arrays and listed in ``errors`` with their
    reason; ``index`` maps array rows back to positions in ``paths``.
    """
    idx, embs, logits, errors = [], [], [], {}
    for b in iter_batches(model, paths, transform=transform, batch_size=batch_size,
                          num_workers=num_workers, device=device, progress=progress):
        errors.update(b.errors)
        if len(b.index):
            idx.append(b.index)
            embs.append(b.embeddings)
            logits.append(b.logits)
    if not idx:
        return Inference(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), errors)
    return Inference(np.concatenate(idx), np.concatenate(embs), np.concatenate(logits), errors)
