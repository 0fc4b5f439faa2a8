"""`active simulate` on a tiny synthetic project (embeddings written directly, no network)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from activefixtures import add_items, add_labels, blobs, publish_version

from active.simulate import first_reaching, flip_labels, simulate_arrays


def test_flip_labels_changes_about_the_rate_and_always_to_another_class() -> None:
    y = np.repeat(np.arange(4), 250)
    noisy, flipped = flip_labels(y, 4, 0.1, np.random.default_rng(0))
    assert 0.07 < flipped.mean() < 0.13
    assert (noisy[flipped] != y[flipped]).all() and (noisy[~flipped] == y[~flipped]).all()


def test_first_reaching() -> None:
    n = np.array([10, 20, 30])
    assert first_reaching(n, np.array([0.5, 0.8, 0.9]), 0.8) == 20
    assert first_reaching(n, np.array([0.5, 0.6, 0.7]), 0.8) is None


def test_simulate_arrays_curves_and_target() -> None:
    rng = np.random.default_rng(0)
    x, y = blobs(rng, 3, 40, dim=8, spread=2.0)
    xt, yt = blobs(np.random.default_rng(0), 3, 10, dim=8, spread=2.0)  # same centres (same seed)
    res = simulate_arrays(x, y, xt, yt, 3, strategy_names=["margin"], init=6, batch=10, budget=45, seeds=2,
                          progress=False)
    assert res.strategies == ["random", "margin"]  # random always runs: it sets the target
    assert len(res.curves) == 4
    assert res.curves[0].n_labels == [6, 16, 26, 36, 45]  # the last batch is cut to the budget
    assert res.target_accuracy == pytest.approx(np.mean([c.accuracy[-1] for c in res.curves if c.strategy == "random"]))
    assert res.labels_to_reach["random"] is not None
    summary = res.summary()
    assert set(summary["strategies"]) == {"random", "margin"} and "disputes" not in summary


def test_simulate_command_end_to_end(project, cli) -> None:  # noqa: ANN001
    classes = project.config.classes
    x, y = blobs(np.random.default_rng(1), 3, 30, dim=16, spread=2.5)
    xt, yt = blobs(np.random.default_rng(1), 3, 8, dim=16, spread=2.5)
    pool = add_items(project, len(y))
    hold = add_items(project, len(yt), split="holdout")
    add_labels(project, [(i, classes[c]) for i, c in zip(pool, y, strict=True)])
    add_labels(project, [(i, classes[c]) for i, c in zip(hold, yt, strict=True)])
    missing = cli("--project", project.root, "simulate")
    assert missing.code == 2 and "active score" in missing.err
    publish_version(project, pool + hold, np.vstack([x, xt]))

    run = cli("--project", project.root, "--json", "simulate", "--strategies", "hybrid,kcenter", "--init", "6",
              "--batch", "8", "--budget", "40", "--seeds", "2", "--noise", "0.1")
    assert run.code == 0, run.err
    data = run.data
    assert data["pool_items"] == 90 and data["test_items"] == 24
    assert set(data["strategies"]) == {"random", "hybrid", "kcenter"}
    for s in data["strategies"].values():
        assert 0.0 <= s["final_accuracy"] <= 1.0
    d = data["disputes"]
    assert len(d["per_seed"]) == 2 and 0.0 <= d["mean"]["average_precision"] <= 1.0
    with open(data["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 2 * 6  # strategies x seeds x rounds (6, 14, 22, 30, 38, 40)
    assert {r["strategy"] for r in rows} == {"random", "hybrid", "kcenter"}
    with open(data["plot"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"

    text = cli("--project", project.root, "simulate", "--strategies", "margin", "--init", "6", "--batch", "10",
               "--budget", "30", "--seeds", "1", "--no-progress")
    assert text.code == 0 and "labels to reach target" in text.out and "plot:" in text.out
    bad = cli("--project", project.root, "simulate", "--strategies", "nope")
    assert bad.code == 2 and "unknown strategy" in bad.err


def test_simulate_replays_the_field_asked_for(project, cli) -> None:  # noqa: ANN001
    from activefixtures import two_field_catalogue

    two_field_catalogue(project, flipped=0)  # colour: its own classes and labels, in the last 8 dimensions
    run = cli("--project", project.root, "--json", "simulate", "--field", "colour", "--strategies", "margin",
              "--init", "6", "--batch", "10", "--budget", "36", "--seeds", "1", "--no-progress")
    assert run.code == 0, run.err
    data = run.data
    assert data["field"] == "colour" and data["pool_items"] == 90 and data["test_items"] == 30
    assert data["strategies"]["margin"]["final_accuracy"] >= 0.9  # black/white from the colour dimensions
    assert data["csv"].endswith("-colour.csv")
    default = cli("--project", project.root, "--json", "simulate", "--strategies", "margin", "--init", "6",
                  "--batch", "10", "--budget", "16", "--seeds", "1", "--no-progress").data
    assert default["field"] == "category" and not default["csv"].endswith("-category.csv")
    bad = cli("--project", project.root, "simulate", "--field", "season")
    assert bad.code == 2 and "no label field 'season'" in bad.err
