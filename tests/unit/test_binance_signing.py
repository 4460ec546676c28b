"""Binance signing against published vectors: Binance's docs, and RFC 8032 for Ed25519."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from killswitch.exchanges.signing import (
    binance_ed25519_private_key,
    binance_ed25519_signature,
    binance_hmac_signature,
    binance_query,
    binance_ws_payload,
)

DOC_KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
DOC_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
ORDER = [
    ("side", "BUY"),
    ("type", "LIMIT"),
    ("timeInForce", "GTC"),
    ("quantity", "1"),
    ("price", "0.1"),
    ("recvWindow", "5000"),
    ("timestamp", "1499827319559"),
]

# RFC 8032 §7.1, TEST 2.
RFC_SECRET = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"
RFC_SIGNATURE = (
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)


def test_the_rest_payload_and_hmac_match_the_published_example() -> None:
    payload = binance_query([("symbol", "LTCBTC"), *ORDER])
    assert payload == (
        "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
        "&recvWindow=5000&timestamp=1499827319559"
    )
    assert (
        binance_hmac_signature(DOC_SECRET, payload)
        == "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    )


def test_non_ascii_values_are_percent_encoded_before_signing_as_published() -> None:
    payload = binance_query([("symbol", "１２３４５６"), *ORDER])
    assert payload == (
        "symbol=%EF%BC%91%EF%BC%92%EF%BC%93%EF%BC%94%EF%BC%95%EF%BC%96&side=BUY&type=LIMIT"
        "&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
    )
    assert (
        binance_hmac_signature(DOC_SECRET, payload)
        == "e1353ec6b14d888f1164ae9af8228a3dbd508bc82eb867db8ab6046442f33ef3"
    )


def test_query_then_body_sign_as_one_string_like_the_published_example() -> None:
    query = binance_query([("symbol", "LTCBTC"), *ORDER[:3]])
    body = binance_query(ORDER[3:])
    assert (
        binance_hmac_signature(DOC_SECRET, query + body)
        == "0fd168b8ddb4876a0358a8d14d0c9f3da0e9b20c5d52b2a00fcf7d1c602f9a77"
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # web-socket-api.md "SIGNED request example (HMAC)"
        (
            {"newOrderRespType": "ACK"},
            "cc15477742bd704c29492d96c7ead9414dfd8e0ec4a00f947bb5bb454ddbd08a",
        ),
        # the same request without newOrderRespType (reference §1.1)
        ({}, "aa1b5712c094bc4e57c05a1a5c1fd8d88dcd628338ea863fec7b88e59fe2db24"),
    ],
)
def test_ws_api_params_sort_and_sign_like_the_published_example(
    extra: dict[str, str], expected: str
) -> None:
    params: dict[str, object] = {
        "symbol": "BTCUSDT",
        "side": "SELL",
        "type": "LIMIT",
        "timeInForce": "GTC",
        "quantity": "0.01000000",
        "price": "52000.00",
        **extra,
        "recvWindow": 100,
        "timestamp": 1645423376532,
        "apiKey": DOC_KEY,
        "signature": "------ FILL ME ------",
    }
    payload = binance_ws_payload(params)
    assert payload.startswith(f"apiKey={DOC_KEY}&")
    assert "signature" not in payload
    assert binance_hmac_signature(DOC_SECRET, payload) == expected


def test_ed25519_signatures_match_rfc_8032_whatever_the_key_encoding() -> None:
    raw = bytes.fromhex(RFC_SECRET)
    pem = (
        Ed25519PrivateKey.from_private_bytes(raw)
        .private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        .decode()
    )
    expected = base64.b64encode(bytes.fromhex(RFC_SIGNATURE)).decode()
    for secret in (base64.b64encode(raw).decode(), pem):
        key = binance_ed25519_private_key(secret)
        assert binance_ed25519_signature(key, "r") == expected


def test_a_malformed_ed25519_secret_is_refused_without_echoing_it() -> None:
    secret = base64.b64encode(b"short").decode()
    with pytest.raises(ValueError, match="32 raw bytes") as caught:
        binance_ed25519_private_key(secret)
    assert secret not in str(caught.value)
