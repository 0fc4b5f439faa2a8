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


def add(session: Session, name: str, password: str, *, role: str = "annotator") -> User:
    """Create a user, or set a new password and role for an existing one."""
    name = check_name(name)
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"the password must have at least {MIN_PASSWORD} characters")
    salt = os.urandom(SALT_BYTES)
    user = session.get(User, name) or User(name=name, role=role, salt=b"", password_hash=b"")
    user.role = role
    user.salt = salt
    user.password_hash = hash_password(password, salt)
    session.add(user)
    session.flush()
    return user


def get(session: Session, name: str) -> User | None:
    return session.get(User, name)


def all_users(session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(User.name)))


def verify(session: Session, name: str, password: str) -> User | None:
    """The user when ``password`` is theirs, else None (compared in constant time)."""
    user = session.get(User, name) if name else None
    if user is None:
        # Spend the same time on an unknown name so timing does not reveal which names exist.
        hash_password(password, b"\0" * SALT_BYTES)
        return None
    ok = hmac.compare_digest(hash_password(password, user.salt), user.password_hash)
    return user if ok else None
