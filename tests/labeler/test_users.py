"""`active users` and storage.users: salted hashes only, roles, password from stdin."""

from __future__ import annotations

import io

import pytest

from active.cli import main
from storage import db, users


def test_add_verify_and_list(project_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pass\n"))
    assert main(["--project", str(project_dir), "users", "add", "ann"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("other-pass\n"))
    assert main(["--project", str(project_dir), "users", "add", "rev", "--role", "reviewer"]) == 0
    assert main(["--project", str(project_dir), "--json", "users", "list"]) == 0
    out = capsys.readouterr().out
    assert '"name": "rev", "role": "reviewer"' in out and "s3cret" not in out
    from active.project import Project

    engine = Project.load(project_dir).engine
    with db.session(engine) as s:
        a = users.get(s, "ann")
        assert b"s3cret-pass" not in a.password_hash and len(a.salt) == users.SALT_BYTES
        assert users.verify(s, "ann", "s3cret-pass") is not None
        assert users.verify(s, "ann", "wrong-pass") is None
        assert users.verify(s, "rev", "other-pass").role == "reviewer"
        assert users.verify(s, "nobody", "x") is None


def test_same_password_gets_different_hashes(project):
    def fn(s):  # noqa: ANN001, ANN202
        return users.add(s, "a", "same-password").password_hash, users.add(s, "b", "same-password").password_hash

    ha, hb = db.write(project.engine, fn)
    assert ha != hb


def test_bad_input_is_a_clear_error(project_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["--project", str(project_dir), "users", "add", "ann"]) == 2
    assert "at least 8" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["--project", str(project_dir), "users", "add", "ann"]) == 2
    assert "no password given" in capsys.readouterr().err
    for action in ("passwd", "disable", "enable"):
        assert main(["--project", str(project_dir), "users", action, "nobody"]) == 2
        assert "no user 'nobody'" in capsys.readouterr().err


def test_the_password_never_comes_from_argv(project_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--project", str(project_dir), "users", "add", "ann", "--password", "s3cret-pass"])
    assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_passwd_disable_enable(project_dir, capsys, monkeypatch):
    from active.project import Project

    engine = Project.load(project_dir).engine
    cli = ["--project", str(project_dir), "users"]
    monkeypatch.setattr("sys.stdin", io.StringIO("first-pass\n"))
    assert main([*cli, "add", "ann"]) == 0
    with db.session(engine) as s:
        gen = users.get(s, "ann").generation
    monkeypatch.setattr("sys.stdin", io.StringIO("second-pass\n"))
    assert main([*cli, "passwd", "ann"]) == 0
    with db.session(engine) as s:
        assert users.verify(s, "ann", "first-pass") is None and users.verify(s, "ann", "second-pass") is not None
        assert users.get(s, "ann").generation > gen  # sessions of the old password end
        assert users.session_generations(s) == {"ann": users.get(s, "ann").generation}
    assert main([*cli, "disable", "ann"]) == 0
    with db.session(engine) as s:
        assert users.verify(s, "ann", "second-pass") is None  # the right password, but disabled
        assert users.session_generations(s) == {}
    capsys.readouterr()
    assert main(["--project", str(project_dir), "--json", "users", "list"]) == 0
    assert '"disabled": true' in capsys.readouterr().out
    assert main([*cli, "enable", "ann"]) == 0
    with db.session(engine) as s:
        assert users.verify(s, "ann", "second-pass") is not None


def test_sign_in_is_always_on(project):
    from active.errors import UserError
    from labeler.app import is_loopback, launch

    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    with pytest.raises(UserError, match="no users yet"):
        launch(project, host="127.0.0.1", port=1, block=False)  # not even on loopback without --no-auth
    with pytest.raises(UserError, match="loopback only"):
        launch(project, host="0.0.0.0", port=1, block=False, no_auth=True)


def test_escaping_user_strings():
    from labeler.app import esc

    assert "<" not in esc("<img src=x onerror=alert(1)>")
    assert esc("**bold**") == "\\*\\*bold\\*\\*"
    # Gradio renders $$...$$ as TeX: no two dollars may stay side by side.
    assert "$$" not in esc("$$\\frac{x$$") and esc("$") == "\\$"


def test_serve_on_a_busy_port_is_one_line_naming_the_option(project_dir, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--project", str(project_dir), "serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--port" in err and str(port) in err and "Traceback" not in err


def test_sigterm_stops_the_labeller_with_its_map_child_and_worker(project_dir):
    """`active serve` stopped with SIGTERM (a service manager, bench/load.py) exits 0 after
    stopping what it started: the local worker and the attribution child."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    from active.project import Project
    from tests.labeler.conftest import free_port

    db.write(Project.load(project_dir).engine, lambda s: users.add(s, "ann", "pw-123456", role="annotator"))
    port = free_port()
    repo = Path(__file__).resolve().parents[2]
    server = subprocess.Popen([sys.executable, "-m", "active.cli", "--project", str(project_dir), "serve",
                               "--port", str(port)], env={**os.environ, "PYTHONPATH": str(repo)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # up, with its two children (worker, map child; and multiprocessing's tracker)
            kids = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                if len(kids) >= 2:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()  # first: its stderr ends only with it
                pytest.fail(f"the labeller did not start: {server.stderr.read()[-2000:]}")
            time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
    err = server.stderr.read()
    assert "attribution child process stopped" in err and "Traceback" not in err
    for pid in map(int, kids):  # each gone, or a zombie nobody reaped yet (a container's init may not)
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] == "Z"
