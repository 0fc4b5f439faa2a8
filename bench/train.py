"""Full fine-tune throughput: training images/s from JPEG files on disk (decode + augmentation +
forward/backward/Adam, `models.train.fine_tune`) next to the model-only training throughput on
synthetic tensors, same batch size, same run; prints the ratio.

    python bench/train.py --n 64 --batch-size 16              # CPU
    python bench/train.py --n 2048 --batch-size 128 --device cuda
"""

from __future__ import annotations

import time
from pathlib import Path

from _common import jpegs, model_bench_args, report, weights_for


def model_only(model, n: int, batch_size: int, size: int, n_classes: int, device) -> float:  # noqa: ANN001
    import torch
    from torch import nn

    from models.infer import autocast
    from models.train import param_groups

    cuda = device.type == "cuda"
    model = model.to(device, memory_format=torch.channels_last) if cuda else model.to(device)
    model.train()
    opt = torch.optim.Adam(param_groups(model, lr_head=1e-3, lr_backbone=1e-4))
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch_size, 3, size, size, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, n_classes, (batch_size,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()
        float(loss.detach())  # the pipeline reads the loss every step too

    step()  # warm-up
    steps = max(1, n // batch_size)
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t)


def main() -> None:
    args, device, workers = model_bench_args(__doc__, n=64, n_help="training images (one epoch)", batch_size=16)
    from models.backbones import build, eval_transform, resolve_weights, train_transform
    from models.train import fine_tune

    paths, labels = jpegs(Path(args.data), args.n)
    n_classes = max(labels) + 1
    rows = []
    for backbone in args.backbones.split(","):
        weights = weights_for(backbone, args.weights)
        spec = resolve_weights(backbone, weights)
        # the pipeline: epoch 1 warms up (allocations, cudnn autotune), epoch 2 is measured
        result = fine_tune(build(backbone, n_classes, spec), paths, labels, [], [],
                           train_transform=train_transform(spec, image_size=args.image_size),
                           eval_transform=eval_transform(spec, image_size=args.image_size), epochs=2,
                           batch_size=args.batch_size, device=device, num_workers=workers, progress=False)
        pipeline = result.history[-1]["images_per_s"]
        synthetic = model_only(build(backbone, n_classes, spec), len(paths), args.batch_size, args.image_size,
                               n_classes, device)
        rows.append({"backbone": backbone, "weights": weights, "device": str(device), "n": len(paths),
                     "batch": args.batch_size, "workers": workers, "pipeline_img_s": float(pipeline),
                     "model_only_img_s": synthetic, "ratio": pipeline / synthetic})
    report(rows, args.json, ["backbone", "weights", "device", "n", "batch", "workers", "pipeline_img_s",
                             "model_only_img_s", "ratio"])


if __name__ == "__main__":
    main()
