"""Label noise: the head's holdout accuracy and ECE when a share of the catalogue is wrong.

One project on the shared sample (train + validation photos = the pool with their folder names
as imported labels, test photos = the holdout), scored once with mobilenet_v2. For each noise
level a copy of it gets a share of its pool labels flipped to another class at random (fixed
seed; the holdout is never touched) by appending a new import, as a corrected catalogue would
arrive; then the project's own pipeline runs on it: `active.disputes.refresh` (the out-of-fold
check), `active.retrain.retrain(mode="head")`. Next to it, the reference of the same run:
scikit-learn's LogisticRegression with C chosen by 5-fold cross-validation on the same (clean)
embeddings.

    python bench/noise.py --keep /tmp/noise-keep   # the first run scores 3,781 photos: minutes on CPU

The last line is ``clean_acc=<a> noisy10_acc=<b> noisy20_acc=<c> noisy10_ece=<d> sklearn_clean_acc=<e>``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DEFAULT_DATA, cli, report

BACKBONE = "mobilenet_v2"
WEIGHTS = "IMAGENET1K_V1"
LEVELS = (0.0, 0.1, 0.2)
# The reference's grid: plain LogisticRegression on the raw embeddings, C from 1e-4 to 100.
SKLEARN_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))
NOISE_ANNOTATOR = "noise-bench"


def scored_project(keep: Path, data: Path) -> Path:
    """``keep/base``: the sample imported and scored (resumed or reused when already there)."""
    base = keep / "base"
    if not (base / "active.toml").is_file():
        cli("init", str(base), "--backbone", BACKBONE, "--weights", WEIGHTS)
        splits = [(data / "train", "pool"), (data / "validation", "pool"), (data / "test", "holdout")]
        for folder, split in splits if (data / "train").is_dir() else [(data, "pool")]:
            cli("--project", str(base), "import", str(folder), "--split", split, "--no-progress")
    cli("--project", str(base), "score", "--no-progress")  # a no-op once every item is scored
    return base


def pool_labels(project) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(item ids, class indices) of the labelled pool, ascending ids."""
    from active.retrain import take_snapshot

    ids, y = take_snapshot(project).all_pool()
    return ids, y


def flip(project, rate: float, seed: int) -> np.ndarray:  # noqa: ANN001
    """Append imported labels that flip a ``rate`` share of the pool; returns the flipped ids."""
    from active.simulate import flip_labels
    from storage import db, labels
    from storage.tables import Label

    classes = project.config.classes
    ids, y = pool_labels(project)
    noisy, flipped = flip_labels(y, len(classes), rate, np.random.default_rng(seed))
    rows = [Label(item_id=int(i), annotator=NOISE_ANNOTATOR, label=classes[int(c)], kind="imported", decision="given")
            for i, c in zip(ids[flipped], noisy[flipped], strict=True)]
    db.write(project.engine, lambda s: labels.append_many(s, rows))
    return ids[flipped]


def run_level(base: Path, work: Path, rate: float, seed: int) -> dict:
    from active import disputes, modelstore
    from active.project import Project
    from active.retrain import retrain

    root = work / f"noise{round(rate * 100)}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(base, root)
    project = Project.load(root)
    flipped = set(flip(project, rate, seed).tolist()) if rate > 0 else set()
    started = time.perf_counter()
    check = disputes.refresh(project)
    check_s = time.perf_counter() - started
    version = retrain(project, mode="head", seed=seed, score_after=False)
    m = version.metrics
    left = set(m["trust"]["left_out_items"])
    hits = len(left & flipped)
    modelstore.clear_cache()
    project.engine.dispose()
    return {
        "noise": rate, "flipped": len(flipped), "left_out": len(left),
        "left_out_precision": hits / len(left) if left else float("nan"),
        "flips_left_out": hits / len(flipped) if flipped else float("nan"),
        "scaled_c": m["regularisation"]["scaled_c"], "temperature": m["temperature"],
        "accuracy": m["holdout"]["accuracy"], "ece": m["holdout"]["ece"], "macro_f1": m["holdout"]["macro_f1"],
        "check_s": check_s, "retrain_s": m["seconds"], "estimated_noise": check.noise_rate,
    }


def sklearn_reference(base: Path) -> dict:
    """Plain scikit-learn on the clean labels and the same embeddings, C by 5-fold CV."""
    from sklearn.linear_model import LogisticRegressionCV
    from threadpoolctl import threadpool_limits

    from active import scoring
    from active.project import Project
    from active.retrain import network_version, take_snapshot

    project = Project.load(base)
    data = take_snapshot(project)
    ids, emb = scoring.load_embeddings(project, network_version(project).id)
    row = {int(i): k for k, i in enumerate(ids.tolist())}
    pool_ids, pool_y = data.all_pool()
    x = emb[[row[int(i)] for i in pool_ids]]
    x_ho = emb[[row[int(i)] for i in data.holdout_ids]]
    started = time.perf_counter()
    with threadpool_limits(limits=1):
        clf = LogisticRegressionCV(Cs=list(SKLEARN_CS), cv=5, scoring="accuracy", max_iter=2000,
                                   l1_ratios=(0.0,), use_legacy_attributes=False)
        clf.fit(x, pool_y)
    acc = float((clf.predict(x_ho) == data.holdout_y).mean())
    project.engine.dispose()
    return {"C": float(clf.C_), "accuracy": acc, "seconds": time.perf_counter() - started}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="class folders (train/validation/test or flat)")
    p.add_argument("--keep", type=Path, help="folder for the scored project, reused by later runs "
                                             "(default: a temporary folder, removed at the end)")
    p.add_argument("--seed", type=int, default=0, help="seed of the label flips (default: 0)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    keep = args.keep or Path(tempfile.mkdtemp(prefix="noise-bench-"))
    keep.mkdir(parents=True, exist_ok=True)
    try:
        base = scored_project(keep, Path(args.data))
        rows = [run_level(base, keep, rate, args.seed) for rate in LEVELS]
        ref = sklearn_reference(base)
    finally:
        if args.keep is None:
            shutil.rmtree(keep, ignore_errors=True)
    shown = [{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    report(shown, args.json, ["noise", "flipped", "left_out", "left_out_precision", "flips_left_out", "scaled_c",
                             "temperature", "accuracy", "ece", "macro_f1", "check_s", "retrain_s"])
    print(f"scikit-learn reference (clean labels, LogisticRegressionCV, C={ref['C']:.4g}): "
          f"holdout accuracy {ref['accuracy']:.4f} in {ref['seconds']:.1f} s")
    clean, n10, n20 = rows
    print(f"clean_acc={clean['accuracy']:.4f} noisy10_acc={n10['accuracy']:.4f} noisy20_acc={n20['accuracy']:.4f} "
          f"noisy10_ece={n10['ece']:.4f} sklearn_clean_acc={ref['accuracy']:.4f}")


if __name__ == "__main__":
    main()
