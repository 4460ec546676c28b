"""MEXC signing against the vectors published in the MEXC spot v3 docs ("SIGNED")."""

from __future__ import annotations

from killswitch.exchanges.signing import mexc_hmac_signature, mexc_query

DOC_SECRET = "45d0b3c26f2644f19bfb98b07741b2f5"
DOC_PAYLOAD = (
    "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=11&recvWindow=5000&timestamp=1644489390087"
)


def test_signature_matches_the_docs_example_2_query_string_vector() -> None:
    assert (
        mexc_hmac_signature(DOC_SECRET, DOC_PAYLOAD)
        == "fd3e4e8543c5188531eb7279d68ae7d26a573d0fc5ab0d18eb692451654d837a"
    )


def test_signature_matches_the_docs_example_3_query_then_body_without_ampersand() -> None:
    total = (
        "symbol=BTCUSDT&side=BUY&type=LIMIT"
        + "quantity=1&price=11&recvWindow=5000&timestamp=1644489390087"
    )
    assert (
        mexc_hmac_signature(DOC_SECRET, total)
        == "d1a676610ceb39174c8039b3f548357994b2a34139a8addd33baadba65684592"
    )


def test_signature_is_lowercase_hex() -> None:
    signature = mexc_hmac_signature(DOC_SECRET, DOC_PAYLOAD)
    assert signature == signature.lower()
    assert len(signature) == 64


def test_query_keeps_parameter_order_as_given() -> None:
    params = [
        ("symbol", "BTCUSDT"),
        ("side", "BUY"),
        ("type", "LIMIT"),
        ("quantity", "1"),
        ("price", "11"),
        ("recvWindow", "5000"),
        ("timestamp", "1644489390087"),
    ]
    assert mexc_query(params) == DOC_PAYLOAD


def test_query_encodes_commas_of_a_symbol_list_in_uppercase_hex() -> None:
    assert mexc_query([("symbol", "BTCUSDT,MXUSDT,ADAUSDT")]) == "symbol=BTCUSDT%2CMXUSDT%2CADAUSDT"
