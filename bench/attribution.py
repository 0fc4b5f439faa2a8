"""Milliseconds per image of each attribution method, next to the model-only forward pass.

    TORCH_HOME=../shared/torch python bench/attribution.py [--backbones mobilenet_v2 resnet50]
        [--methods gradcam ig guided occlusion] [--images 6] [--slow-images 1] [--size 224]

Real photos from ../shared/datasets/clothing-small, preprocessed as the labeller does (whole
photo, shorter side --size). Per backbone and method it reports the median ms per image of
`models.explain.attribute` (the heatmap at photo size), and of the forward pass alone
(`torch.inference_mode`, batch 1, same input tensors, same run), and their ratio, in wall and
in process CPU time (the latter is steadier on a shared machine). The gradcam row
also gives the overlay + JPEG encode time (what `active.explain` adds on a cache miss). The
attribution runs on `models.explain`'s own copy of the network (BatchNorm folded, channels-last on
CPU); the forward pass on the network as loaded.
mobilenet_v2 uses its ImageNet weights when found under TORCH_HOME; resnet50 runs with random
weights (none are shipped here): the cost of attribution does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATASET = REPO.parent / "shared" / "datasets" / "clothing-small"
os.environ.setdefault("TORCH_HOME", str(REPO.parent / "shared" / "torch"))

SLOW_METHODS = ("ig", "occlusion")


def load_photos(n: int) -> list:
    from PIL import Image

    folders = sorted(p for p in (DATASET / "train").iterdir() if p.is_dir())
    paths = [sorted(f.iterdir())[0] for f in folders][:n]
    return [Image.open(p).convert("RGB") for p in paths]


def build(backbone: str):  # noqa: ANN201
    import torch
    import torchvision

    weights = None
    if backbone == "mobilenet_v2":
        ckpt = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
        weights = "IMAGENET1K_V1" if ckpt.is_file() else None
    torch.manual_seed(0)
    return torchvision.models.get_model(backbone, weights=weights).eval(), weights or "random"


def timed(fn, reps: int) -> list[tuple[float, float]]:  # noqa: ANN001
    """(wall ms, process CPU ms) of each of ``reps`` calls. CPU time says less about a machine
    shared with other jobs than wall time does, so both are reported."""
    out = []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        out.append(((time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000))
    return out


def median(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--methods", nargs="+", default=["gradcam", "ig", "guided", "occlusion"])
    parser.add_argument("--images", type=int, default=6, help="photos per fast method (gradcam, guided)")
    parser.add_argument("--slow-images", type=int, default=1, help="photos per slow method (ig, occlusion)")
    parser.add_argument("--size", type=int, default=224, help="shorter side of the network input")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)

    import torch

    from active.explain import OVERLAY_QUALITY
    from models.explain import IG_STEPS, attribute, occlusion_geometry, overlay, preprocess

    if args.threads:
        torch.set_num_threads(args.threads)
    photos = load_photos(max(args.images, args.slow_images))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus; "
          f"{len(photos)} photos, first {photos[0].size[0]}x{photos[0].size[1]}, input shorter side {args.size}")
    h, w = preprocess(photos[0], size=args.size).shape[-2:]
    win, stride = occlusion_geometry(h, w)
    print(f"ig: {IG_STEPS} steps; occlusion: window {win}, stride {stride} on {h}x{w}; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    header = (f"{'backbone':<13} {'weights':<14} {'method':<10} {'n':>3} {'ms/image':>9} {'fwd ms':>7} "
              f"{'ratio':>6} {'cpu ms/image':>12} {'fwd cpu ms':>10} {'cpu ratio':>9}  note")
    print(header)
    print("-" * len(header))
    for backbone in args.backbones:
        model, weights = build(backbone)
        inputs = [preprocess(p, size=args.size) for p in photos]
        attribute(model, photos[0], "gradcam", size=args.size)  # copy, layer search, first kernels
        with torch.inference_mode():
            for x in inputs:
                model(x)
        for method in args.methods:
            n = args.slow_images if method in SLOW_METHODS else args.images
            if method not in SLOW_METHODS:  # warm-up for this method's shapes (slow ones: too dear)
                attribute(model, photos[0], method, size=args.size)
            per_image, forward = [], []
            for photo, x in zip(photos[:n], inputs[:n], strict=True):
                per_image += timed(lambda p=photo, m=model, k=method: attribute(m, p, k, size=args.size), 1)
                with torch.inference_mode():
                    forward += timed(lambda x=x, m=model: m(x), 3)
            (ms, cpu), (fwd, fwd_cpu) = median(per_image), median(forward)
            note = ""
            if method == "gradcam":
                heat = attribute(model, photos[0], "gradcam", size=args.size)

                def render(heat=heat) -> None:
                    buf = io.BytesIO()
                    overlay(photos[0], heat).save(buf, format="JPEG", quality=OVERLAY_QUALITY)

                render()
                note = "overlay+JPEG {:.0f} ms ({:.0f} cpu); ".format(*median(timed(render, 5)))
            note += f"load {os.getloadavg()[0]:.1f}"
            print(f"{backbone:<13} {weights:<14} {method:<10} {n:>3} {ms:>9.1f} {fwd:>7.1f} {ms / fwd:>6.1f} "
                  f"{cpu:>12.1f} {fwd_cpu:>10.1f} {cpu / fwd_cpu:>9.1f}  {note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
