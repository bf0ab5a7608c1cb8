"""AWS Signature Version 4 as an S3 server checks it (header auth; stdlib ``hmac`` only).

The server rebuilds the canonical request from what it received (method, URI-encoded path,
sorted query, the signed headers, the payload hash the client declared), signs it with the
secret of the access key the ``Authorization`` header names, and compares in constant time.
A declared payload hash must match the body unless it is ``UNSIGNED-PAYLOAD``. Presigned URLs
and ``aws-chunked`` streaming bodies are not supported: the lab's clients do not send them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/(?P<service>[^/,\s]+)"
    r"/aws4_request\s*,\s*SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<sig>[0-9a-f]{64})\s*$")


class AuthError(Exception):
    """A request that fails authentication, with the S3 error code to answer it with."""

    def __init__(self, code: str, message: str, status: int = 403):
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class Authorization:
    """The parsed ``Authorization`` header."""

    key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> Authorization:
    """Parse a SigV4 ``Authorization`` header.

    Raises:
        AuthError: ``AuthorizationHeaderMalformed`` (400).
    """
    m = _AUTH_RE.fullmatch(value.strip())
    if not m:
        raise AuthError("AuthorizationHeaderMalformed", "Authorization header malformed", 400)
    return Authorization(m["key"], m["date"], m["region"], m["service"], tuple(m["signed"].split(";")), m["sig"])


def _encode(text: str, safe: str) -> str:
    return quote(text, safe=safe)


def canonical_query(query: str) -> str:
    """Sorted, re-encoded ``k=v`` pairs (a key without ``=`` has an empty value)."""
    pairs = []
    for part in query.split("&") if query else []:
        k, _, v = part.partition("=")
        pairs.append((_encode(unquote(k), "-_.~"), _encode(unquote(v), "-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_request(method: str, raw_path: str, query: str, headers: dict, signed: tuple[str, ...],
                      payload_hash: str) -> str:
    """The canonical request of SigV4 for S3 (the path is encoded once, ``/`` kept)."""
    lines = [method, _encode(unquote(raw_path), "/-_.~"), canonical_query(query)]
    lines += [f"{h}:{' '.join(headers.get(h, '').split())}" for h in signed]
    lines += ["", ";".join(signed), payload_hash]
    return "\n".join(lines)


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """``HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")``."""
    k = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def signature(secret: str, auth: Authorization, amz_date: str, creq: str) -> str:
    """The hex signature of canonical request ``creq``."""
    scope = f"{auth.date}/{auth.region}/{auth.service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    return hmac.new(signing_key(secret, auth.date, auth.region, auth.service), to_sign.encode(), hashlib.sha256).hexdigest()


def verify(method: str, target: str, headers: dict, body: bytes, region: str, secret_of) -> str:
    """Check a request's signature; return the access key id it was signed with.

    Args:
        method, target, headers, body: the request as received (header names lower-case).
        region: the server's ``s3_region``; a credential scope for another region is refused.
        secret_of: ``key_id -> secret or None`` (``None``: no such key).

    Raises:
        AuthError: ``InvalidAccessKeyId`` (unknown key), ``SignatureDoesNotMatch``,
            ``AuthorizationHeaderMalformed``, ``XAmzContentSHA256Mismatch``.
    """
    auth = parse_authorization(headers["authorization"])
    secret = secret_of(auth.key_id)
    if secret is None:
        raise AuthError("InvalidAccessKeyId", f"No such key: {auth.key_id}")
    if auth.region != region or auth.service != "s3":
        raise AuthError("AuthorizationHeaderMalformed",
                        f"Authorization header malformed, unexpected scope: {auth.date}/{auth.region}/{auth.service}", 400)
    if "host" not in auth.signed_headers:
        raise AuthError("AuthorizationHeaderMalformed", "Header `Host` should be signed", 400)
    amz_date = headers.get("x-amz-date", "")
    payload_hash = headers.get("x-amz-content-sha256", "")
    if not amz_date or not payload_hash:
        raise AuthError("AccessDenied", "Missing X-Amz-Date or X-Amz-Content-Sha256 header")
    path, _, query = target.partition("?")
    creq = canonical_request(method, path, query, headers, auth.signed_headers, payload_hash)
    if not hmac.compare_digest(signature(secret, auth, amz_date, creq), auth.signature):
        raise AuthError("SignatureDoesNotMatch",
                        "The request signature we calculated does not match the signature you provided.")
    if payload_hash != UNSIGNED and payload_hash != hashlib.sha256(body).hexdigest():
        raise AuthError("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match "
                        "what was computed.", 400)
    return auth.key_id
