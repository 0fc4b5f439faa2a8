"""`active users` and storage.users: salted hashes only, roles, password from stdin."""

from __future__ import annotations

import io

import pytest

from active.cli import main
from storage import db, users


def test_add_verify_and_list(project_dir, capsys, monkeypatch):
    assert main(["--project", str(project_dir), "users", "add", "ann", "--password", "s3cret-pass"]) == 0
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


def test_bad_input_is_a_clear_error(project_dir, capsys):
    assert main(["--project", str(project_dir), "users", "add", "ann", "--password", "short"]) == 2
    assert "at least 8" in capsys.readouterr().err


def test_serving_off_loopback_needs_users(project):
    from active.errors import UserError
    from labeler.app import is_loopback, launch

    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    with pytest.raises(UserError, match="without sign-in"):
        launch(project, host="0.0.0.0", port=1, block=False)


def test_escaping_user_strings():
    from labeler.app import esc

    assert "<" not in esc("<img src=x onerror=alert(1)>")
    assert esc("**bold**") == "\\*\\*bold\\*\\*"


def test_serve_on_a_busy_port_is_one_line_naming_the_option(project_dir, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--project", str(project_dir), "serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--port" in err and str(port) in err and "Traceback" not in err


def test_an_empty_sign_in_says_what_is_missing(labeller):
    import httpx

    for form, missing in ((("", ""), "a user name and a password"), (("ann", ""), "a password"),
                          (("", "x"), "a user name")):
        resp = httpx.post(labeller.url + "login", data={"username": form[0], "password": form[1]})
        assert resp.status_code in (400, 422), resp.text
        assert f"sign-in needs {missing}" in resp.text
    assert httpx.post(labeller.url + "login", data={"username": "ann", "password": "wrong"}).status_code == 400
