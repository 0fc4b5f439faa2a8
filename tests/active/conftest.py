"""Helpers for the tests of active/: run the CLI in-process and read its JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from active.cli import main


class CliRun:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def data(self) -> dict[str, Any]:
        """The one JSON object a --json run printed."""
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliRun]:
    """``cli(*argv) -> CliRun``: `active.cli.main` in-process with stdout/stderr captured."""

    def run(*argv: str | Path) -> CliRun:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err)

    return run


@pytest.fixture
def open_project_dir(tmp_path: Path) -> Path:
    """A fresh project with no taxonomy yet (classes inferred at the first import)."""
    root = tmp_path / "open"
    assert main(["init", str(root), "--backbone", "mobilenet_v2"]) == 0
    return root
