"""Encryption at rest for provider credentials (Fernet, from the ``cryptography`` package).

The key is ``TIDINGS_SECRET_KEY`` (a Fernet key: 32 url-safe base64-encoded bytes). Without it, the
embedded default keeps a generated key in ``<data dir>/secret.key`` (mode 0600), so a first
``tidings serve`` needs no set-up; losing that file makes the saved secrets unreadable.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    def __init__(self, key: str | bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError as exc:
            raise ValueError(
                "TIDINGS_SECRET_KEY is not a Fernet key; make one with "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
            ) from exc

    @classmethod
    def from_settings(cls, secret_key: str | None, data_dir: Path) -> SecretBox:
        if data_dir.exists():
            private_folder(data_dir)
        if secret_key:
            return cls(secret_key)
        path = data_dir / "secret.key"
        if not path.exists():
            private_folder(data_dir)
            _create_key(path)
        _owner_only(path, 0o600)
        return cls(path.read_bytes().strip())

    def seal(self, values: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(values).encode()).decode()

    def open(self, token: str) -> dict[str, Any]:
        if not token:
            return {}
        try:
            data = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            raise ValueError("saved secrets cannot be decrypted with this TIDINGS_SECRET_KEY") from exc
        return dict(data)


def private_folder(folder: Path) -> None:
    """The data folder, readable by its owner only (0700): created so, and tightened if it is ours. A
    folder owned by someone else or shared on purpose (sticky, like /tmp) is left as it is."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _owner_only(folder, 0o700)


def _owner_only(path: Path, mode: int) -> None:
    info = path.stat()
    ours = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    if info.st_mode & 0o077 and ours and not info.st_mode & stat.S_ISVTX:
        os.chmod(path, mode)


def _create_key(path: Path) -> None:
    """Write a new key to ``path`` unless one is there, safely when several processes start at once: the
    key is written whole to a file of this process, then linked to ``path`` — which fails, leaving the
    first key in place, when another process got there first. Nobody ever reads a half-written key."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key())
            fh.flush()
            os.fsync(fh.fileno())
        # Atomic, and never replaces an existing file: when another process's key won, everyone uses it.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def mask(value: str) -> str:
    """A hint of a secret that is safe to show: its last four characters."""
    return "…" + value[-4:] if len(value) > 8 else "…"
