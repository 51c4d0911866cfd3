"""Encryption at rest for provider credentials (Fernet, from the ``cryptography`` package).

The key is ``TIDINGS_SECRET_KEY`` (a Fernet key: 32 url-safe base64-encoded bytes). Without it, the
embedded default keeps a generated key in ``<data dir>/secret.key`` (mode 0600), so a first
``tidings serve`` needs no set-up; losing that file makes the saved secrets unreadable.
"""

from __future__ import annotations

import json
import os
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
        if secret_key:
            return cls(secret_key)
        path = data_dir / "secret.key"
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
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


def mask(value: str) -> str:
    """A hint of a secret that is safe to show: its last four characters."""
    return "…" + value[-4:] if len(value) > 8 else "…"
