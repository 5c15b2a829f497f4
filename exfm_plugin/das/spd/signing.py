"""HMAC-SHA256 signatures of snapshot manifests: the SPD's proof that the FM trainer published it.

The manifest holds the sha256 and size of every file of a snapshot, so a checksum check alone
only proves that files and manifest agree: whoever can write the SPD can replace both. A
signature over the whole manifest, under a key the writer of the SPD does not have, closes that.

* What is signed: ``b"exfm-snapshot-manifest-v1\\n"`` + the manifest as canonical JSON (keys
  sorted, no whitespace, UTF-8, no NaN). The prefix keeps a manifest signature from ever being
  valid for another kind of message under the same key.
* Keys: text lines of a key file (``#`` comments, blank lines ignored), each at least
  :data:`MIN_KEY_CHARS` characters, e.g. ``openssl rand -hex 32``. Several files or several
  lines make a rotation list: the first key signs, every key is accepted. Rotate by putting the
  new key first and dropping the old one once no snapshot signed by it is still in use.
* A ``key_id`` (a hash of the key, not the key) names the signing key in the signature, so a
  refusal can say which key signed a snapshot nobody accepts any more.
Comparison is ``hmac.compare_digest``. Nothing here logs or repeats a key.
"""
from __future__ import annotations

from ...errors import ExfmInputError

import hashlib
import hmac
import json
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ALGORITHM", "MIN_KEY_CHARS", "SignatureError", "SigningKeys", "canonical_manifest"]

logger = logging.getLogger("exfm_plugin.das.signing")  # the name before das/ became subpackages

ALGORITHM = "hmac-sha256"
MIN_KEY_CHARS = 32
_DOMAIN = b"exfm-snapshot-manifest-v1\n"


class SignatureError(ExfmInputError):
    """A key file is unusable, or a signature is missing, malformed or does not verify."""


def canonical_manifest(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the domain prefix and the manifest as canonical JSON."""
    try:
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise SignatureError(f"manifest is not canonical JSON: {e}") from None
    return _DOMAIN + body.encode("utf-8")


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"exfm-spd-key-id\n" + key).hexdigest()[:16]


class SigningKeys:
    """The accepted SPD keys, newest first: the first signs, any verifies. ``repr`` shows ids only."""

    def __init__(self, keys: Sequence[bytes], sources: Sequence[str] = ()) -> None:
        if not keys:
            raise SignatureError("no SPD signing key given")
        self._keys = tuple(bytes(k) for k in keys)
        self.sources = tuple(sources)
        self.key_ids = tuple(_key_id(k) for k in self._keys)

    def __repr__(self) -> str:
        return f"SigningKeys(key_ids={list(self.key_ids)})"

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike]) -> "SigningKeys":
        """Read one or more key files (one key a line), in order: the first key of the first file signs."""
        keys: list[bytes] = []
        sources: list[str] = []
        for p in paths:
            path = os.fspath(p)
            try:
                mode = os.stat(path).st_mode
                with open(path, encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise SignatureError(f"SPD key file {path}: cannot read it "
                                     f"({getattr(e, 'strerror', None) or type(e).__name__})") from None
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                logger.warning("SPD key file %s is accessible to group/others (mode %o); `chmod 600` it",
                               path, stat.S_IMODE(mode))
            found = 0
            for lineno, line in enumerate(lines, 1):
                key = line.strip()
                if not key or key.startswith("#"):
                    continue
                if len(key) < MIN_KEY_CHARS:
                    raise SignatureError(f"SPD key file {path}, line {lineno}: a key must have at least "
                                         f"{MIN_KEY_CHARS} characters (e.g. `openssl rand -hex 32`)")
                keys.append(key.encode("utf-8"))
                found += 1
            if not found:
                raise SignatureError(f"SPD key file {path} holds no key (one key a line, # comments)")
            sources.append(path)
        if len(set(keys)) != len(keys):
            raise SignatureError(f"SPD key files {sources}: the same key appears twice")
        return cls(keys, sources)

    @property
    def signing_key_id(self) -> str:
        """The id of the key new snapshots are signed with."""
        return self.key_ids[0]

    def sign(self, manifest: Mapping[str, Any]) -> dict[str, str]:
        """The signature record of ``manifest`` under the first key."""
        mac = hmac.new(self._keys[0], canonical_manifest(manifest), hashlib.sha256).hexdigest()
        return {"algorithm": ALGORITHM, "key_id": self.key_ids[0], "hmac": mac}

    def verify(self, manifest: Mapping[str, Any], signature: Mapping[str, Any] | None) -> str:
        """Return the id of the accepted key that signed ``manifest``; :class:`SignatureError` why not."""
        if signature is None:
            raise SignatureError("signature missing")
        if not isinstance(signature, Mapping) or signature.get("algorithm") != ALGORITHM:
            alg = signature.get("algorithm") if isinstance(signature, Mapping) else None
            raise SignatureError(f"signature algorithm {alg!r}, expected {ALGORITHM!r}")
        given = signature.get("hmac")
        if not isinstance(given, str) or len(given) != 64:
            raise SignatureError("signature malformed (hmac is not 64 hex digits)")
        message = canonical_manifest(manifest)
        accepted = None
        for key, kid in zip(self._keys, self.key_ids):  # no early exit: every key costs the same
            expected = hmac.new(key, message, hashlib.sha256).hexdigest()
            if hmac.compare_digest(expected, given) and accepted is None:
                accepted = kid
        if accepted is None:
            claimed = signature.get("key_id")
            known = claimed in self.key_ids
            raise SignatureError(
                f"signature does not verify under any of the {len(self._keys)} accepted SPD key(s) "
                f"(it names key id {claimed!r}, "
                f"{'an accepted key: manifest or signature changed after signing' if known else 'not an accepted key'})")
        return accepted
