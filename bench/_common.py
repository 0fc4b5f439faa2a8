"""Shared bits of the model benchmarks: picking images and weights, printing results."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "clothing-small"
if "TORCH_HOME" not in os.environ and (REPO.parent / "shared" / "torch").is_dir():
    os.environ["TORCH_HOME"] = str(REPO.parent / "shared" / "torch")


def jpegs(root: Path, n: int) -> tuple[list[Path], list[int]]:
    """``n`` JPEGs round-robin over the class folders of ``root`` (or its train/), with labels."""
    base = root / "train" if (root / "train").is_dir() else root
    folders = sorted(p for p in base.iterdir() if p.is_dir())
    if not folders:
        raise SystemExit(f"no class folders under {base}")
    files = [sorted(f.glob("*.jp*g")) for f in folders]
    paths, labels = [], []
    k = 0
    while len(paths) < n and any(k < len(f) for f in files):
        for c, f in enumerate(files):
            if k < len(f) and len(paths) < n:
                paths.append(f[k])
                labels.append(c)
        k += 1
    return paths, labels


def weights_for(backbone: str, wanted: str) -> str:
    """The weights asked for when they are cached, else "none" (throughput does not depend on
    the values of the weights; the bench says which it used)."""
    from models.backbones import WeightsError, resolve_weights

    try:
        return resolve_weights(backbone, wanted).name
    except WeightsError:
        return "none"


def report(rows: list[dict], as_json: bool, columns: list[str]) -> None:
    if as_json:
        print(json.dumps(rows))
        return
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _fmt(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)
