"""The SMART Backend Services signing key and the client assertions it signs (pure: no I/O).

SMART App Launch 2.0 asks a backend client to prove who it is with a short-lived JWT signed
by its private key (RFC 7523, ``private_key_jwt``), RS384 for an RSA key or ES384 for an EC
P-384 key; the EHR checks it with the public key registered for the client. Nothing here
ever puts key material in a message: errors say what is wrong with the key, never what it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

__all__ = [
    "ASSERTION_LIFETIME_S",
    "CLIENT_ASSERTION_TYPE",
    "SigningKey",
    "client_assertion",
    "public_jwks",
    "signing_key",
]

ASSERTION_LIFETIME_S = 300
"""SMART: a client assertion expires no more than five minutes after it is made."""
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MIN_RSA_BITS = 2048
"""RFC 7518 asks RSA signing keys of at least 2048 bits."""


@dataclass(frozen=True)
class SigningKey:
    """A private key fit for client assertions, with the JWS algorithm and key id it signs with."""

    key: RSAKey | ECKey = field(repr=False)
    alg: str
    kid: str


def signing_key(pem: str, kid: str = "") -> SigningKey:
    """Parse an unencrypted PEM private key (RSA, or EC on P-384).

    Without ``kid``, the key's RFC 7638 JWK thumbprint: SMART requires a ``kid`` in every
    assertion, and the thumbprint is the standard name derived from the key alone, so the
    same key always gets the same id and a JWK Set made from it (:func:`public_jwks`)
    carries the id the assertions name. Raises ValueError saying what is wrong.
    """
    key = _private_key(pem)
    if isinstance(key, RSAKey):
        if key.raw_value.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key needs {MIN_RSA_BITS} bits or more for RS384")
        alg = "RS384"
    else:
        if key.curve_name != "P-384":
            raise ValueError(f"an EC key must be on P-384 for ES384, not {key.curve_name}")
        alg = "ES384"
    return SigningKey(key, alg, kid or key.thumbprint())


def _private_key(pem: str) -> RSAKey | ECKey:
    data = pem.encode()
    for kind in (RSAKey, ECKey):
        try:
            key = kind.import_key(data)
        except (JoseError, ValueError, TypeError):
            # The library's message may quote the input: ours names only what is wrong.
            continue
        if not key.is_private:
            raise ValueError("it holds a public key; the private key is needed")
        return key
    raise ValueError("it is not an unencrypted PEM private key of type RSA or EC")


def client_assertion(
    key: SigningKey, client_id: str, token_url: str, *, now: float, jti: str
) -> str:
    """The signed JWT that authenticates ``client_id`` to the token endpoint ``token_url``.

    ``jti`` must never repeat: the server refuses a replayed assertion.
    """
    header = {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
    issued = int(now)
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_S,
        "jti": jti,
    }
    return jwt.encode(header, claims, key.key, algorithms=[key.alg])


def public_jwks(key: SigningKey) -> dict[str, Any]:
    """The public half as a JWK Set, as an EHR registers it (a JWKS URL or pasted)."""
    public = key.key.as_dict(private=False)
    return {"keys": [{**public, "kid": key.kid, "alg": key.alg, "use": "sig"}]}
