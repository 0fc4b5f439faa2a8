"""Shared bits of the model benchmarks: picking images and weights, printing results."""

from __future__ import annotations

import json
import os
import socket
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
        return resolve_weights(backbone, wanted, offline=True).name
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


def add_synthetic_items(project, n_total: int, *, copy_predictions: bool = False,  # noqa: ANN001
                        batch: int = 2000) -> int:
    """Add pool item rows pointing at the same photos (fresh hashes), with the originals' imported
    labels (and, with ``copy_predictions``, their predictions: same photo, same embedding row),
    until the project holds ``n_total`` items. Returns how many were added."""
    import hashlib

    from sqlmodel import select

    from storage import db
    from storage.tables import Item, Label, Prediction

    with db.session(project.engine) as s:
        base = list(s.exec(select(Item).where(Item.split == "pool").order_by(Item.id)))
        n_have = len(list(s.exec(select(Item.id))))
        given = {lab.item_id: lab.label for lab in s.exec(select(Label).where(Label.kind == "imported"))}
        by_item: dict[int, list[Prediction]] = {}
        if copy_predictions:
            for p in s.exec(select(Prediction)):
                by_item.setdefault(p.item_id, []).append(p)
    need = max(n_total - n_have, 0)
    for start in range(0, need, batch):
        def fn(s, start=start):  # noqa: ANN001, ANN202
            new = []
            for k in range(start, min(start + batch, need)):
                src = base[k % len(base)]
                sha = hashlib.sha256(f"{src.sha256}/{k}".encode()).hexdigest()
                new.append((src, Item(sha256=sha, path=src.path, width=src.width, height=src.height, mode=src.mode,
                                      source="synthetic", split="pool", meta={"copy_of": src.id})))
            s.add_all(it for _, it in new)
            s.flush()
            for src, it in new:
                if src.id in given:
                    s.add(Label(item_id=it.id, annotator="import", label=given[src.id], kind="imported",
                                decision="given"))
                for p in by_item.get(src.id, []):
                    s.add(Prediction(item_id=it.id, model_version_id=p.model_version_id, pred=p.pred,
                                     confidence=p.confidence, margin=p.margin, entropy=p.entropy, probs=p.probs,
                                     row=p.row))

        db.write(project.engine, fn)
    return need


def free_port() -> int:
    """A free TCP port on loopback (the benches' servers never bind anything else)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str) -> None:
    """Run an `active` command in-process; stop the bench when it fails."""
    from active.cli import main

    code = main(list(args))
    if code != 0:
        raise SystemExit(f"active {' '.join(args)} failed with exit code {code}")
