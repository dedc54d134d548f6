"""The fleet's command-signing key: the one secret that can re-point every box, so it lives only here.

Ed25519 (small, fast on a Raspberry Pi, no parameters to get wrong). The private key is made on first
use (or by `polewatch server signing-key`), written owner-read-only and never leaves the server; its
public half is handed to each box at enrolment and pinned there (trust.command_key). Replacing the
key means re-enrolling or re-keying every box, so back the file up with the database.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import make_url

from polewatch.protocol.signing import key_id, public_pem

from .settings import Settings

FILE_NAME = "command-signing-key.pem"


def key_path(settings: Settings) -> Path:
    """Where the key is: as configured, else beside a SQLite database, else var/ of the working folder."""
    if settings.signing_key_file:
        return Path(settings.signing_key_file)
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).parent / FILE_NAME
    return Path("var") / FILE_NAME


def load_or_create(path: Path) -> Ed25519PrivateKey:
    """The key in `path`, made (0600, never overwritten) when there is none yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another replica made it a moment ago: use theirs
            return load_or_create(path)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        return key
    loaded = serialization.load_pem_private_key(data, password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not an Ed25519 private key")
    return loaded


def public_key_pem(settings: Settings) -> tuple[str, str]:
    """(public key PEM, key id) of the fleet's key, made if needed: what a box is given at enrolment."""
    public = load_or_create(key_path(settings)).public_key()
    return public_pem(public), key_id(public)
