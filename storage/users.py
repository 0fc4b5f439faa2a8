"""Annotators and reviewers: salted scrypt password hashes, never the password itself."""

from __future__ import annotations

import hashlib
import hmac
import os

from sqlmodel import Session, select

from storage.tables import ROLES, User

# scrypt cost (RFC 7914): N=2**14, r=8, p=1 takes ~16 MiB and tens of ms, the usual interactive setting.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_NAME = 128
MIN_PASSWORD = 8


def hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                          maxmem=64 * 2**20, dklen=HASH_BYTES)


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or any(ord(c) < 32 for c in name) or ":" in name:
        raise ValueError(f"user name {name!r} must be 1-{MAX_NAME} printable characters without ':'")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"the password must have at least {MIN_PASSWORD} characters")
    return password


def _set_password(user: User, password: str) -> None:
    user.salt = os.urandom(SALT_BYTES)
    user.password_hash = hash_password(check_password(password), user.salt)
    user.generation = (user.generation or 0) + 1  # sessions signed in with the old password end


def add(session: Session, name: str, password: str, *, role: str = "annotator") -> User:
    """Create a user, or set a new password and role for an existing one (ending its sessions)."""
    name = check_name(name)
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    check_password(password)
    user = session.get(User, name) or User(name=name, role=role, salt=b"", password_hash=b"", generation=0)
    user.role = role
    _set_password(user, password)
    session.add(user)
    session.flush()
    return user


def _existing(session: Session, name: str) -> User:
    user = session.get(User, name)
    if user is None:
        raise ValueError(f"no user {name!r}: see `active users list`")
    return user


def set_password(session: Session, name: str, password: str) -> User:
    """A new password for an existing user; its open sessions end."""
    user = _existing(session, name)
    _set_password(user, password)
    session.add(user)
    session.flush()
    return user


def set_disabled(session: Session, name: str, disabled: bool) -> User:
    """Disable (no sign-in, open sessions end) or enable an existing user."""
    user = _existing(session, name)
    if user.disabled != disabled:
        user.disabled = disabled
        user.generation += 1
        session.add(user)
        session.flush()
    return user


def session_generations(session: Session) -> dict[str, int]:
    """name -> generation of every user who may be signed in (disabled users are left out)."""
    rows = session.exec(select(User.name, User.generation).where(User.disabled == False))  # noqa: E712
    return {name: gen for name, gen in rows}


def get(session: Session, name: str) -> User | None:
    return session.get(User, name)


def all_users(session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(User.name)))


def verify(session: Session, name: str, password: str) -> User | None:
    """The user when ``password`` is theirs and the user is enabled, else None (compared in
    constant time)."""
    user = session.get(User, name) if name else None
    if user is None or user.disabled:
        # Spend the same time on an unknown name so timing does not reveal which names exist.
        hash_password(password, b"\0" * SALT_BYTES)
        return None
    ok = hmac.compare_digest(hash_password(password, user.salt), user.password_hash)
    return user if ok else None
