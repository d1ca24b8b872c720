"""Throw-away private keys for the SMART Backend Services tests, generated per test session."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from joserfc.jwk import ECKey, OKPKey, RSAKey


@cache
def pem(kind: str) -> str:
    """A fresh private key in PEM: ``rsa``, ``ec`` (P-384), ``rsa-1024``, ``ec-p256``,
    ``ed25519``, or ``rsa-public`` (a public key only)."""
    if kind == "ec":
        return ECKey.generate_key("P-384").as_pem(private=True).decode()
    if kind == "ec-p256":
        return ECKey.generate_key("P-256").as_pem(private=True).decode()
    if kind == "ed25519":
        return OKPKey.generate_key("Ed25519").as_pem(private=True).decode()
    if kind == "rsa-public":
        return RSAKey.import_key(pem("rsa")).as_pem(private=False).decode()
    bits = 1024 if kind == "rsa-1024" else 2048
    return RSAKey.generate_key(bits, auto_kid=False, private=True).as_pem(private=True).decode()


def key_file(folder: Path, kind: str) -> Path:
    path = folder / f"{kind}.pem"
    path.write_text(pem(kind))
    return path
