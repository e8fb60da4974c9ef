"""Encryption of secret values at rest, with a key derived from the cluster key (issue 15).

The proposer (the API thread of the node that receives the write) seals every value of a
secret before the command is built, so the Raft log, RocksDB and snapshots only ever hold the
sealed form; any node that holds the cluster key opens it on read. The state machine never
encrypts nor decrypts: it stores what the command carries (`prisn.fsm.secrets`).

- Key: HKDF-SHA256 of the 32-byte cluster secret (`transport.curve.read_key_file`), no salt,
  info `INFO`: the same on every node, unrelated to the CurveZMQ keys (other HMAC labels).
- Cipher: AES-256-GCM (`cryptography`), a fresh random 96-bit nonce per value.
- Envelope (bytes): ``b"\\x01" + nonce (12) + ciphertext + tag (16)``; a plain value stays a
  str, so the two never look alike to the table.
- Associated data: canonical CBOR ``["prisn secret v1", namespace, name, key]``: a sealed value
  moved to another secret or another key of the same secret does not open.
- Request fingerprint (`digest`): HMAC-SHA256 (key from HKDF info `FP_INFO`) of the plain
  values, 16 bytes, carried in the command so that a retry with the same Idempotency-Key is
  recognised although its nonces differ; keyed, so it is no offline guessing oracle.

Pure apart from `os.urandom` (nonces); immutable after construction; any thread.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

INFO = b"prisn secrets v1"
FP_INFO = b"prisn secrets fingerprint v1"
AD_LABEL = "prisn secret v1"
ENVELOPE_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES  # bytes a sealed value has beyond its UTF-8 text
DIGEST_BYTES = 16
UNENCRYPTED_WARNING = ("secrets are stored unencrypted: start with a cluster key to encrypt "
                       "them at rest")

Stored = str | bytes  # a value as the table holds it: plain text, or a sealed envelope
Opener = Callable[[str, str, str, Stored], str]  # (namespace, name, key, stored) -> text


class SecretDecryptError(ValueError):
    """A stored value that does not open: another cluster key, a value moved between secrets
    or keys, a corrupted envelope, or a sealed value on a node without a cluster key. The
    message never holds any part of the value."""


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def associated_data(namespace: str, name: str, key: str) -> bytes:
    """What binds a sealed value to its place (canonical CBOR, unambiguous)."""
    return cbor2.dumps([AD_LABEL, namespace, name, key], canonical=True)


class SecretBox:
    """Seals and opens secret values with the key derived from one cluster secret."""

    __slots__ = ("_aead", "_fp_key")

    def __init__(self, cluster_secret: bytes) -> None:
        if len(cluster_secret) != 32:
            raise ValueError("a cluster secret is 32 bytes")
        self._aead = AESGCM(_hkdf(cluster_secret, INFO))
        self._fp_key = _hkdf(cluster_secret, FP_INFO)

    def __repr__(self) -> str:
        return "SecretBox(<cluster key>)"

    def seal(self, namespace: str, name: str, key: str, value: str) -> bytes:
        """The envelope of `value` (a fresh random nonce: never the same bytes twice)."""
        nonce = os.urandom(NONCE_BYTES)
        ct = self._aead.encrypt(nonce, value.encode("utf-8"),
                                associated_data(namespace, name, key))
        return bytes([ENVELOPE_VERSION]) + nonce + ct

    def open(self, namespace: str, name: str, key: str, blob: bytes) -> str:
        """The text sealed in `blob` for exactly (namespace, name, key); SecretDecryptError
        otherwise."""
        if len(blob) < OVERHEAD or blob[0] != ENVELOPE_VERSION:
            raise SecretDecryptError(f"value {key} of secret {namespace}/{name} is not a "
                                     "sealed value of this version")
        try:
            raw = self._aead.decrypt(blob[1:1 + NONCE_BYTES], blob[1 + NONCE_BYTES:],
                                     associated_data(namespace, name, key))
        except InvalidTag:
            raise SecretDecryptError(
                f"value {key} of secret {namespace}/{name} does not decrypt with this "
                "node's cluster key (another key, or a value that was moved)") from None
        return raw.decode("utf-8")

    def digest(self, namespace: str, name: str, data: Mapping[str, str]) -> bytes:
        """The keyed fingerprint of a request's plain values (see the module doc)."""
        return _digest(self._fp_key, namespace, name, data)


def _digest(key: bytes, namespace: str, name: str, data: Mapping[str, str]) -> bytes:
    blob = cbor2.dumps([namespace, name, sorted(data.items())], canonical=True)
    return hmac.new(key, blob, hashlib.sha256).digest()[:DIGEST_BYTES]


def seal_data(box: SecretBox | None, namespace: str, name: str,
              data: Mapping[str, str]) -> tuple[dict[str, Stored], bytes]:
    """(values as the command carries them, request digest). Without a box the values stay
    plain text and the digest is an unkeyed HMAC (the values are in the log anyway)."""
    if box is None:
        return dict(sorted(data.items())), _digest(b"", namespace, name, data)
    sealed: dict[str, Stored] = {k: box.seal(namespace, name, k, v)
                                 for k, v in sorted(data.items())}
    return sealed, box.digest(namespace, name, data)


def opener(box: SecretBox | None) -> Opener:
    """The `decrypt` callable for `prisn.fsm.secrets.secret_env` and the API: plain text as
    is, a sealed value opened with `box` (SecretDecryptError without one)."""

    def open_value(namespace: str, name: str, key: str, stored: Stored) -> str:
        if isinstance(stored, str):
            return stored
        if box is None:
            raise SecretDecryptError(f"secret {namespace}/{name} is encrypted and this node "
                                     "has no cluster key (start it with --cluster-key-file)")
        return box.open(namespace, name, key, stored)

    return open_value
