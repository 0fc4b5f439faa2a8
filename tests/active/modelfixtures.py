"""Helpers for the scoring/retrain tests: a project on a small random-init torchvision network
and seeded synthetic photos (no real weights needed)."""

from __future__ import annotations

from pathlib import Path

from active.cli import main
from active.project import Project

# A small torchvision classifier with an `fc` head: cheap to build and run at 32 px.
TINY_BACKBONE = "shufflenet_v2_x0_5"
TINY_SIZE = 32
CLASSES = ("dress", "shirt", "shoes")


def make_tiny_project(tmp_path: Path, draw, *, per_class: int = 6, holdout_per_class: int = 0) -> Project:  # noqa: ANN001
    """A project with ``per_class`` labelled pool images per class (and a labelled holdout)."""
    root = tmp_path / "proj"
    assert main(["init", str(root), "--classes", ",".join(CLASSES), "--backbone", TINY_BACKBONE,
                 "--weights", "none", "--image-size", str(TINY_SIZE)]) == 0
    pool = tmp_path / "pool"
    hold = tmp_path / "hold"
    for c, name in enumerate(CLASSES):
        for n in range(per_class):
            draw(pool / name / f"{n}.png", 2 * c, seed=1000 * c + n)
        for n in range(holdout_per_class):
            draw(hold / name / f"{n}.png", 2 * c, seed=1000 * c + 500 + n)
    assert main(["--project", str(root), "import", str(pool), "--no-progress"]) == 0
    if holdout_per_class:
        assert main(["--project", str(root), "import", str(hold), "--split", "holdout", "--no-progress"]) == 0
    return Project.load(root)
