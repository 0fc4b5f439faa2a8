"""Pool-scoring throughput: images/s from JPEG files on disk (decode + eval transform + network,
the `active score` path through `models.infer.embed_and_predict`) next to the model-only
throughput on synthetic tensors, same batch size, same run; prints the ratio.

    python bench/score.py --n 256 --batch-size 32            # CPU
    python bench/score.py --n 4096 --batch-size 256 --device cuda
"""

from __future__ import annotations

import time

from _common import jpegs, model_bench_args, report, weights_for


def model_only(model, n: int, batch_size: int, size: int, device) -> float:  # noqa: ANN001
    import torch

    from models.infer import autocast, prepare

    model = prepare(model, device)
    x = torch.randn(batch_size, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    steps = max(1, n // batch_size)
    with torch.inference_mode(), autocast(device):
        model(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            model(x).float().cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t)


def main() -> None:
    args, device, workers = model_bench_args(__doc__, n=256, n_help="images per measurement", batch_size=32)
    from pathlib import Path

    from models.backbones import build, eval_transform, resolve_weights
    from models.infer import embed_and_predict

    paths, _ = jpegs(Path(args.data), args.n)
    rows = []
    for backbone in args.backbones.split(","):
        weights = weights_for(backbone, args.weights)
        spec = resolve_weights(backbone, weights)
        model = build(backbone, None, spec)
        tf = eval_transform(spec, image_size=args.image_size)
        embed_and_predict(model, paths[: args.batch_size], transform=tf, batch_size=args.batch_size,
                          num_workers=0, device=device)  # warm-up (first-call allocations)
        t = time.perf_counter()
        inf = embed_and_predict(model, paths, transform=tf, batch_size=args.batch_size, num_workers=workers,
                                device=device)
        pipeline = len(inf.index) / (time.perf_counter() - t)
        synthetic = model_only(model, len(paths), args.batch_size, args.image_size, device)
        rows.append({"backbone": backbone, "weights": weights, "device": str(device), "n": len(paths),
                     "batch": args.batch_size, "workers": workers, "pipeline_img_s": pipeline,
                     "model_only_img_s": synthetic, "ratio": pipeline / synthetic})
    report(rows, args.json, ["backbone", "weights", "device", "n", "batch", "workers", "pipeline_img_s",
                             "model_only_img_s", "ratio"])


if __name__ == "__main__":
    main()
