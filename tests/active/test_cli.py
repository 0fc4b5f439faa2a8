"""CLI behaviour: global options anywhere, --json, one-line user errors, a light `--help`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from active.cli import COMMANDS, build_parser
from active.project import Project
from tests.conftest import REPO

PYTHON = sys.executable


def _active(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([PYTHON, "-m", "active.cli", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=120)


def test_project_before_or_after_the_subcommand(cli, project_dir: Path, tmp_path: Path,  # noqa: ANN001
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    before = cli("--project", project_dir, "--json", "status")
    after = cli("status", "--project", project_dir, "--json")
    mixed = cli("--json", "status", "--project", project_dir)
    assert before.code == after.code == mixed.code == 0
    assert before.data == after.data == mixed.data
    assert before.data["project"] == str(project_dir.resolve())
    monkeypatch.chdir(project_dir)  # default: the current directory
    assert cli("status", "--json").data == before.data
    monkeypatch.chdir(tmp_path)
    r = cli("status")
    assert r.code == 2 and "no active.toml here" in r.err


def test_json_is_one_object_on_stdout(cli, project_dir: Path, class_folder: Path) -> None:  # noqa: ANN001
    for argv in (["import", class_folder, "--no-progress"], ["status"], ["classes", "list"],
                 ["classes", "add", "hats"]):
        r = cli("--project", project_dir, "--json", *argv)
        assert r.code == 0
        assert r.out.count("\n") == 1 and isinstance(json.loads(r.out), dict), argv
    st = cli("--project", project_dir, "status", "--json").data
    # Imported labels are given labels, not a person's: the items are not labelled yet.
    assert st["items"]["pool"] == {"items": 12, "labelled": 0, "given_only": 12, "unlabelled": 0}
    assert st["classes"]["dress"] == {"imported": 4, "total": 4}
    assert st["classes"]["hats"] == {"total": 0}
    text = cli("--project", project_dir, "status").out
    assert "split" in text and "pool" in text and "no model version yet" in text


def test_init_options_and_presets(cli, tmp_path: Path) -> None:  # noqa: ANN001
    r = cli("init", tmp_path / "p", "--preset", "deepfashion", "--backbone", "resnet18", "--weights", "none",
            "--image-size", "160", "--json")
    assert r.code == 0
    cfg = Project.load(tmp_path / "p").config
    assert cfg.classes[:3] == ["Blazer", "Blouse", "Cardigan"] and len(cfg.classes) == 15
    assert (cfg.backbone, cfg.weights, cfg.image_size) == ("resnet18", "none", 160)
    assert (tmp_path / "p" / "artifacts").is_dir() and (tmp_path / "p" / "active.db").is_file()
    assert len(cli("init", tmp_path / "q", "--preset", "deepfashion2", "--json").data["classes"]) == 13
    assert cli("init", tmp_path / "r", "--preset", "clothing10", "--json").data["classes"][0] == "dress"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["import", "{tmp}/nope"], "no such file or folder"),
        (["import", "{tmp}/photos", "--label-column", "x"], "are for manifests, not folders"),
        (["classes", "rename", "dress", "shirt"], "exists already"),
        (["classes", "rename", "nope", "x"], "is not in the taxonomy"),
        (["classes", "remove", "dress", "--into", "dress"], "--into must name another class"),
        (["classes", "add", "bad\tname"], "control characters"),
        (["init", "{proj}"], "already exists"),
    ],
)
def test_user_errors_are_one_line_exit_2(cli, project_dir: Path, class_folder: Path, argv: list[str],  # noqa: ANN001
                                         message: str) -> None:
    tmp = project_dir.parent
    argv = [a.format(tmp=tmp, proj=project_dir) for a in argv]
    r = cli("--project", project_dir, *argv)
    assert r.code == 2
    assert r.out == ""
    assert r.err.count("\n") == 1 and r.err.startswith(f"active {argv[0]}: error: ") and message in r.err


def test_user_error_in_a_subprocess_has_no_traceback(tmp_path: Path) -> None:
    r = _active("--project", tmp_path, "import", tmp_path / "missing")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    r = _active("--project", tmp_path, "status", "--bogus")  # argparse's own usage error
    assert r.returncode == 2 and "Traceback" not in r.stderr and "unrecognized arguments: --bogus" in r.stderr


def test_unreachable_or_bad_databases_are_one_line(cli, project_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    r = cli("init", tmp_path / "pg", "--db", "postgresql+psycopg://u:secret@127.0.0.1:1/none")
    assert r.code == 2 and r.err.count("\n") == 1 and "secret" not in r.err and "cannot open database" in r.err
    assert cli("init", tmp_path / "bad", "--db", "notaurl").code == 2
    toml = project_dir / "active.toml"
    toml.write_text(toml.read_text().replace('db = "sqlite:///active.db"',
                                              'db = "postgresql+psycopg://u@127.0.0.1:1/none"'))
    r = cli("--project", project_dir, "status")
    assert r.code == 2 and r.err.count("\n") == 1 and "cannot open database" in r.err


def test_old_schema_is_refused_by_every_command(cli, project_dir: Path, class_folder: Path) -> None:  # noqa: ANN001
    db_file = project_dir / "active.db"
    engine = sa.create_engine(f"sqlite:///{db_file}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE meta SET value = '0' WHERE key = 'schema_version'"))
    engine.dispose()
    for argv in (["status"], ["import", class_folder], ["classes", "list"]):
        r = cli("--project", project_dir, *argv)
        assert r.code == 2 and "schema version 0" in r.err and r.err.count("\n") == 1
    engine = sa.create_engine(f"sqlite:///{db_file}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT value FROM meta WHERE key='schema_version'")).scalar() == "0"
        assert conn.execute(sa.text("SELECT count(*) FROM item")).scalar() == 0
    engine.dispose()


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from active.cli import main\n"
        "for argv in (['--help'], ['import', '--help'], ['init', '--help'], ['status', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'gradio', 'captum') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("HEAVY=")


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([name, "--help"])
        assert exc.value.code == 0
        assert "--project" in capsys.readouterr().out


def _label_rows(project_dir: Path) -> list[tuple]:
    """Every Label row as raw column values, read with plain SQL."""
    import sqlite3

    with sqlite3.connect(project_dir / "active.db") as conn:
        return conn.execute("SELECT * FROM label ORDER BY id").fetchall()


def test_classes_add_rename_remove(cli, project_dir: Path, class_folder: Path) -> None:  # noqa: ANN001
    def classes() -> list[str]:
        return Project.load(project_dir).config.classes

    cli("--project", project_dir, "import", class_folder, "--no-progress")
    d = cli("--project", project_dir, "classes", "add", "hats", "dress", "--json").data
    assert d["added"] == ["hats"] and classes() == ["dress", "shirt", "shoes", "hats"]
    st = cli("--project", project_dir, "status", "--json").data
    assert st["classes"]["dress"]["total"] == 4  # adding a class keeps every label
    before = _label_rows(project_dir)
    d = cli("--project", project_dir, "classes", "rename", "shoes", "footwear", "--json").data
    assert d["label_rows"] == 4 and classes() == ["dress", "shirt", "footwear", "hats"]
    assert _label_rows(project_dir) == before  # an alias: every Label row byte-identical
    assert cli("--project", project_dir, "status", "--json").data["classes"]["footwear"]["total"] == 4
    assert cli("--project", project_dir, "classes", "list", "--json").data["labels"] == {
        "dress": 4, "shirt": 4, "footwear": 4}
    r = cli("--project", project_dir, "classes", "remove", "shirt")
    assert r.code == 2 and "4 labels use 'shirt'" in r.err and "nothing was changed" in r.err
    assert "shirt" in classes()
    d = cli("--project", project_dir, "classes", "remove", "shirt", "--into", "dress", "--json").data
    assert d["label_rows"] == 4 and classes() == ["dress", "footwear", "hats"]
    d = cli("--project", project_dir, "classes", "remove", "hats", "--json").data
    assert d["label_rows"] == 0 and classes() == ["dress", "footwear"]
    assert _label_rows(project_dir) == before
    assert cli("--project", project_dir, "classes", "list", "--json").data["labels"] == {"dress": 8, "footwear": 4}
