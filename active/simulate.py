"""`active simulate`: replay a labelled dataset as the oracle and compare strategies.

From the same random initial set per seed, each strategy labels ``batch`` items per round up
to ``budget``, the head (`models.head.fit_head`) is refitted on cached embeddings every round,
and accuracy is measured on a fixed test split. With ``noise`` > 0 a share of the oracle's
labels is flipped to another class first (so the learner is taught by a noisy oracle too) and
the disputes detector (`active.disputes.find_label_issues`) is scored against the flips.

`simulate_arrays` is the whole experiment on arrays; `simulate_project` feeds it a project's
imported pool labels, holdout split and cached embeddings and writes the CSV and the plot. In a
project with several label fields it replays one field (the default one unless told): that
field's imported labels are the oracle, its holdout labels the test set, its classes the head's.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from active import strategies
from storage.fields import DEFAULT_FIELD

BASELINE = "random"
# Offset of the strategies' random streams from the seed's own (init set, noise) stream.
ROUND_SEED_STRIDE = 1000


@dataclass
class Curve:
    strategy: str
    seed: int
    n_labels: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    macro_f1: list[float] = field(default_factory=list)


@dataclass
class SimulationResult:
    curves: list[Curve]
    strategies: list[str]
    seeds: int
    budget: int
    target_accuracy: float  # the baseline's mean accuracy at the full budget
    labels_to_reach: dict[str, int | None]  # first label count where the mean curve reaches it
    final_accuracy: dict[str, float]
    disputes: list[dict[str, Any]]  # per seed, with --noise: the detector against the flips
    seconds: float

    def mean_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """strategy -> (n_labels (r,), mean accuracy (r,), std accuracy (r,)) over seeds."""
        out = {}
        for name in self.strategies:
            runs = [c for c in self.curves if c.strategy == name]
            acc = np.array([c.accuracy for c in runs])
            out[name] = (np.array(runs[0].n_labels), acc.mean(axis=0), acc.std(axis=0))
        return out

    def summary(self) -> dict[str, Any]:
        means = self.mean_curves()
        per = {}
        for name in self.strategies:
            n_labels, mean, std = means[name]
            per[name] = {
                "final_accuracy": round(float(mean[-1]), 4),
                "final_accuracy_std": round(float(std[-1]), 4),
                "labels_to_reach_target": self.labels_to_reach[name],
                "area_under_curve": round(float(mean.mean()), 4),
                "curve": {int(n): round(float(a), 4) for n, a in zip(n_labels, mean, strict=True)},
            }
        out: dict[str, Any] = {
            "baseline": BASELINE,
            "target_accuracy": round(self.target_accuracy, 4),
            "budget": self.budget,
            "seeds": self.seeds,
            "strategies": per,
            "seconds": round(self.seconds, 1),
        }
        if self.disputes:
            keys = ("average_precision", "precision", "recall")
            out["disputes"] = {
                "per_seed": self.disputes,
                "mean": {k: round(float(np.mean([d[k] for d in self.disputes])), 4) for k in keys},
            }
        return out


def flip_labels(labels: np.ndarray, num_classes: int, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip a ``rate`` share of ``labels`` (n,) to a uniformly drawn *other* class.
    Returns (noisy labels (n,), flipped mask (n,))."""
    if not 0.0 <= rate < 1.0:
        raise ValueError("noise must be in [0, 1)")
    flipped = rng.random(labels.shape[0]) < rate
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, num_classes, int(flipped.sum()))) % num_classes
    return noisy, flipped


def _evaluate(head, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:  # noqa: ANN001
    from sklearn.metrics import f1_score

    pred = head.predict_proba(x).argmax(axis=1)
    return float((pred == y).mean()), float(f1_score(y, pred, average="macro", zero_division=0))


def first_reaching(n_labels: np.ndarray, mean: np.ndarray, target: float) -> int | None:
    hit = np.flatnonzero(mean >= target - 1e-12)
    return int(n_labels[hit[0]]) if hit.size else None


def simulate_arrays(
    pool_x: np.ndarray,
    pool_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    *,
    strategy_names: Sequence[str],
    init: int,
    batch: int,
    budget: int,
    seeds: int,
    noise: float = 0.0,
    progress: bool = True,
    fit: Callable[..., Any] | None = None,
) -> SimulationResult:
    """Run the experiment on arrays.

    pool_x: (n_pool, dim) embeddings, pool_y: (n_pool,) oracle class indices; test_x: (n_test,
    dim), test_y: (n_test,). ``BASELINE`` is always run (its final accuracy is the target).
    """
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    from active.disputes import detection_metrics, find_label_issues

    if fit is None:
        from models.head import fit_head as fit
    names = list(dict.fromkeys([BASELINE, *strategy_names]))
    for name in names:
        strategies.get(name)
    n_pool = pool_x.shape[0]
    if init < 1 or batch < 1 or seeds < 1:
        raise ValueError("init, batch and seeds must be positive")
    budget = min(budget, n_pool)
    if init > budget:
        raise ValueError(f"init ({init}) cannot exceed the budget ({budget})")
    rounds = 1 + -(-(budget - init) // batch)
    ids = np.arange(n_pool)
    curves: list[Curve] = []
    dispute_rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    # Many small BLAS calls: one thread each avoids oversubscription on a shared machine, where
    # the default thread pool spends more time spinning than computing.
    with threadpool_limits(limits=1), tqdm(total=len(names) * seeds * rounds, disable=not progress,
                                           desc="simulate", unit="fit") as bar:
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            oracle, flipped = (flip_labels(pool_y, num_classes, noise, rng) if noise > 0
                               else (pool_y, np.zeros(n_pool, dtype=bool)))
            initial = rng.permutation(n_pool)[:init]
            if noise > 0:
                t0 = time.perf_counter()
                issues = find_label_issues(pool_x, oracle, num_classes, seed=seed)
                row = {"seed": seed, **detection_metrics(flipped, issues.score, issues.flagged),
                       "estimated_noise_rate": round(issues.noise_rate, 4),
                       "seconds": round(time.perf_counter() - t0, 1)}
                dispute_rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            for s_index, name in enumerate(names):
                strategy = strategies.get(name)
                srng = np.random.default_rng([seed, ROUND_SEED_STRIDE + s_index])
                labelled = np.zeros(n_pool, dtype=bool)
                labelled[initial] = True
                curve = Curve(name, seed)
                while True:
                    head = fit(pool_x[labelled], oracle[labelled], num_classes, seed=seed)
                    acc, f1 = _evaluate(head, test_x, test_y)
                    curve.n_labels.append(int(labelled.sum()))
                    curve.accuracy.append(acc)
                    curve.macro_f1.append(f1)
                    bar.update(1)
                    left = budget - int(labelled.sum())
                    if left <= 0 or labelled.all():
                        break
                    un = ~labelled
                    probs = head.predict_proba(pool_x[un]) if strategy.needs_probs else None
                    sel = strategies.select(name, ids[un], min(batch, left), probs=probs,
                                            embeddings=pool_x[un] if strategy.needs_embeddings else None,
                                            labelled=pool_x[labelled] if name == "kcenter" else None, rng=srng)
                    labelled[sel.ids] = True
                curves.append(curve)
    result = SimulationResult(curves, names, seeds, budget, 0.0, {}, {}, dispute_rows,
                              time.perf_counter() - start)
    means = result.mean_curves()
    result.target_accuracy = float(means[BASELINE][1][-1])
    result.labels_to_reach = {n: first_reaching(means[n][0], means[n][1], result.target_accuracy) for n in names}
    result.final_accuracy = {n: float(means[n][1][-1]) for n in names}
    return result


def write_csv(result: SimulationResult, path: Path) -> Path:
    """One row per (strategy, seed, round): the learning curves."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["strategy", "seed", "n_labels", "accuracy", "macro_f1"])
        for c in result.curves:
            for n, a, f in zip(c.n_labels, c.accuracy, c.macro_f1, strict=True):
                w.writerow([c.strategy, c.seed, n, f"{a:.5f}", f"{f:.5f}"])
    return path


def plot(result: SimulationResult, path: Path, *, title: str = "") -> Path:
    """Mean accuracy per strategy with a band of one standard deviation over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, (n_labels, mean, std) in result.mean_curves().items():
        (line,) = ax.plot(n_labels, mean, label=f"{name} (reaches target at {result.labels_to_reach[name]})")
        ax.fill_between(n_labels, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.axhline(result.target_accuracy, color="grey", linestyle="--", linewidth=1,
               label=f"{BASELINE} at {result.budget} labels: {result.target_accuracy:.3f}")
    ax.set_xlabel("labelled items")
    ax.set_ylabel("holdout accuracy")
    ax.set_title(title or f"learning curves, mean ± std over {result.seeds} seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass
class ProjectData:
    pool_ids: np.ndarray
    pool_x: np.ndarray
    pool_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    version_id: int
    missing: int  # labelled items without a cached embedding (not used)
    field: str = DEFAULT_FIELD


def load_project_data(project, field: str | None = None) -> ProjectData:  # noqa: ANN001
    """The oracle (pool items' imported labels of label field ``field``, default: the default
    field), the test split (holdout items' current labels of it) and the serving version's cached
    embeddings."""
    from active.errors import UserError
    from active.scoring import load_embeddings
    from storage import db, items, labels, versions
    from storage.enums import Split

    field = project.check_field(field or DEFAULT_FIELD)
    with db.session(project.engine) as s:
        version = versions.serving(s)
        if version is None:
            raise UserError("no model version yet: run `active score` first (the simulation uses its cached embeddings)")
        pool = items.ids(s, split=Split.POOL)
        holdout = items.ids(s, split=Split.HOLDOUT)
        current = labels.current(s, pool + holdout, field=field)
    emb_ids, emb = load_embeddings(project, version.id)
    row_of = {int(i): r for r, i in enumerate(np.asarray(emb_ids).tolist())}
    classes = list(project.classes_of(field))
    missing = 0

    def gather(ids: list[int], label_of: Callable[[Any], str | None]) -> tuple[list[int], list[int]]:
        nonlocal missing
        keep, ys = [], []
        for i in ids:
            cur = current.get(i)
            lab = label_of(cur) if cur is not None else None
            if lab is None or lab not in classes:
                continue
            if i not in row_of:
                missing += 1
                continue
            keep.append(i)
            ys.append(classes.index(lab))
        return keep, ys

    pool_keep, pool_y = gather(pool, lambda c: c.imported)
    test_keep, test_y = gather(holdout, lambda c: c.label)
    if len(pool_keep) < 2:
        raise UserError("the simulation needs pool items with imported labels (the oracle): "
                        f"found {len(pool_keep)} with embeddings; import a labelled folder and run `active score`")
    if not test_keep:
        raise UserError("the simulation needs labelled holdout items (the test set): "
                        "import one with `active import DIR --split holdout` and run `active score`")
    return ProjectData(
        np.asarray(pool_keep), emb[[row_of[i] for i in pool_keep]], np.asarray(pool_y),
        emb[[row_of[i] for i in test_keep]], np.asarray(test_y), classes, int(version.id), missing, field,
    )


def simulate_project(
    project,  # noqa: ANN001
    *,
    strategy_names: Sequence[str],
    init: int,
    batch: int,
    budget: int,
    seeds: int,
    noise: float = 0.0,
    progress: bool = True,
    field: str | None = None,
) -> tuple[SimulationResult, dict[str, Any]]:
    """Run `simulate_arrays` on the project's data of label field ``field`` (default: the default
    field) and write CSV, PNG and JSON summary under artifacts/simulations/. Returns the result
    and the summary (with the file paths)."""
    data = load_project_data(project, field)
    result = simulate_arrays(data.pool_x, data.pool_y, data.test_x, data.test_y, len(data.classes),
                             strategy_names=strategy_names, init=init, batch=batch, budget=budget,
                             seeds=seeds, noise=noise, progress=progress)
    out_dir = project.artifacts / "simulations"
    out_dir.mkdir(parents=True, exist_ok=True)
    other_field = data.field != DEFAULT_FIELD  # named in the file names and the plot
    stem = time.strftime("sim-%Y%m%d-%H%M%S") + f"-v{data.version_id}" + (f"-{data.field}" if other_field else "")
    summary = result.summary() | {
        "field": data.field, "version_id": data.version_id, "pool_items": int(data.pool_x.shape[0]),
        "test_items": int(data.test_x.shape[0]), "init": init, "batch": batch, "noise": noise,
        "skipped_without_embeddings": data.missing,
    }
    summary["csv"] = str(write_csv(result, out_dir / f"{stem}.csv"))
    summary["plot"] = str(plot(result, out_dir / f"{stem}.png",
                               title=f"{project.root.name}{f' {data.field}' if other_field else ''}: "
                                     f"{data.pool_x.shape[0]} pool, "
                                     f"{data.test_x.shape[0]} test, {seeds} seeds"
                                     + (f", noise {noise:g}" if noise else "")))
    summary_path = out_dir / f"{stem}.json"
    summary["summary"] = str(summary_path)
    summary_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return result, summary
