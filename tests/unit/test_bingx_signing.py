"""BingX signing against published vectors (never recomputed with the code under test)."""

from __future__ import annotations

from killswitch.exchanges.signing import bingx_signature, bingx_signed_query

# The docs' example key pair [BX-DOC "签名认证"]. The docs' own output for it (1e63e8cf...) does
# not reproduce; reference §3.1 gives the value that does, recomputed with Python hmac.
DOC_SECRET = "mheO6dR8ovSsxZQCOYEFCtelpuxcWGTfHw7te326y6jOwq5WpvFQ9JNljoTwBXZGv5It07m9RXSPpDQEK2w"
DOC_PAYLOAD = "recvWindow=0&symbol=BTC-USDT&timestamp=1696751141337"
DOC_SIGNATURE = "f8d883609dfd31c824feb4de865b071008dedb1d461451fa70847875c8e7a7a2"
# The v3 docs' recipe, `openssl dgst -sha256 -hmac 'SECRET_KEY'` over the same sorted string,
# run with OpenSSL 3 outside this code.
RECIPE_SIGNATURE = "fe041f159118c90ac13eab4d32f9e2d75b80ca6fe17ca8acd290aba864753ce2"
# openssl over `orderIds=1,2&symbol=BTC-USDT&timestamp=1696751141337` with 'SECRET_KEY': the
# raw comma is signed, though `%2C` is sent (ccxt bingx.sign does the same).
BATCH_SIGNATURE = "3a3c74aa5bf5b4fa958bd2f37f3631c37bfaf73fd90b91c4f1cda14b0e5000b4"


def test_signature_matches_the_reference_vector_for_the_documented_key() -> None:
    assert bingx_signature(DOC_SECRET, DOC_PAYLOAD) == DOC_SIGNATURE


def test_signature_matches_the_v3_openssl_recipe() -> None:
    assert bingx_signature("SECRET_KEY", DOC_PAYLOAD) == RECIPE_SIGNATURE


def test_signed_query_signs_the_params_in_the_order_given_and_appends_the_signature() -> None:
    query = bingx_signed_query(
        DOC_SECRET,
        [("recvWindow", "0"), ("symbol", "BTC-USDT"), ("timestamp", "1696751141337")],
    )
    assert query == f"{DOC_PAYLOAD}&signature={DOC_SIGNATURE}"


def test_signed_query_signs_raw_values_but_sends_them_percent_encoded() -> None:
    query = bingx_signed_query(
        "SECRET_KEY",
        [("orderIds", "1,2"), ("symbol", "BTC-USDT"), ("timestamp", "1696751141337")],
    )
    assert query == (
        f"orderIds=1%2C2&symbol=BTC-USDT&timestamp=1696751141337&signature={BATCH_SIGNATURE}"
    )
