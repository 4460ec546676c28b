"""Request signing per venue: build the exact string the venue signs, then sign it.

Each venue helper owns its own clearly named functions below; none is shared across venues,
because each venue signs a different string. Tests check them against the venues' published
vectors, never against a recomputation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

# -- Binance ------------------------------------------------------------------------------


def binance_query(params: Iterable[tuple[str, str]]) -> str:
    """Percent-encode `params` in order as `k=v&k=v` (UTF-8, nothing left unescaped but
    unreserved characters): the string Binance REST signs and receives [BN-REST]."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)


def binance_signed_query(sign: Callable[[str], str], params: Iterable[tuple[str, str]]) -> str:
    """The query to send: `params` as `binance_query` encodes them, then `signature`, which is
    `sign` (HMAC hex or Ed25519 base64) of exactly that string, percent-encoded [BN-REST]."""
    query = binance_query(params)
    return f"{query}&signature={quote(sign(query), safe='')}"


def binance_ws_payload(params: Mapping[str, object]) -> str:
    """The ws-api signature payload: every param but `signature`, sorted by name, `k=v`
    joined by `&`, not percent-encoded [BN-WS "SIGNED request example (HMAC)"]."""
    return "&".join(
        f"{k}={binance_ws_value(v)}" for k, v in sorted(params.items()) if k != "signature"
    )


def binance_ws_value(value: object) -> str:
    """A ws-api param value as it appears in the signature payload."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def binance_hmac_signature(secret: str, payload: str) -> str:
    """HMAC-SHA256 of `payload` keyed with `secret`, as lowercase hex."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def binance_ed25519_signature(key: Ed25519PrivateKey, payload: str) -> str:
    """Ed25519 signature of `payload`, base64 (percent-encode it when it goes in a URL)."""
    return base64.b64encode(key.sign(payload.encode())).decode()


def binance_ed25519_private_key(secret: str) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from PEM (PKCS#8) or base64 of the raw 32 bytes."""
    text = secret.strip()
    if text.startswith("-----BEGIN"):
        key = load_pem_private_key(text.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the PEM key is not an Ed25519 private key")
        return key
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 32:
        raise ValueError("an Ed25519 private key is 32 raw bytes")
    return Ed25519PrivateKey.from_private_bytes(raw)


# -- MEXC ---------------------------------------------------------------------------------


def mexc_query(params: Iterable[tuple[str, str]]) -> str:
    """Percent-encode `params` in order as `k=v&k=v`, escapes in uppercase hex: commas in a
    symbol list go out as `%2C`, as MEXC asks for batch values before signing [MX-DOC "SIGNED"]."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)


def mexc_hmac_signature(secret: str, total_params: str) -> str:
    """HMAC-SHA256 of totalParams (the query string immediately followed by the body, no `&`
    between them) keyed with `secret`, as lowercase hex [MX-DOC "SIGNED"]."""
    return hmac.new(secret.encode(), total_params.encode(), hashlib.sha256).hexdigest()


def mexc_signed_query(secret: str, params: Iterable[tuple[str, str]]) -> str:
    """The query to send: `params` as `mexc_query` encodes them, then the `signature` of exactly
    that string (a request with no body: totalParams is the query)."""
    query = mexc_query(params)
    return f"{query}&signature={mexc_hmac_signature(secret, query)}"


# -- BingX --------------------------------------------------------------------------------


def bingx_signature(secret: str, payload: str) -> str:
    """HMAC-SHA256 of `payload` keyed with `secret`, as lowercase hex [BX-DOC "签名认证"]."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def bingx_query(params: Iterable[tuple[str, str]]) -> str:
    """`k=v&k=v` in the order given, only the values percent-encoded: what BingX receives."""
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in params)


def bingx_signed_query(secret: str, params: Iterable[tuple[str, str]]) -> str:
    """Sign `params` the way BingX verifies them and return the query string to send.

    The signature covers `k=v&k=v` with the raw values in the order given; the query carries
    the same pairs with only the values percent-encoded, then `signature` [BX-DOC; ccxt
    bingx.sign: it signs `orderIds=1,2` and sends `orderIds=1%2C2`]. Pass the params sorted by
    name: the current docs sign them sorted, the older ones in any order as sent.
    """
    pairs = list(params)
    payload = "&".join(f"{k}={v}" for k, v in pairs)
    sent = bingx_query(pairs)
    signature = bingx_signature(secret, payload)
    return f"{sent}&signature={signature}" if sent else f"signature={signature}"
