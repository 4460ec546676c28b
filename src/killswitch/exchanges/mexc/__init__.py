"""MEXC spot v3: the connector (`connector`) and its frame and answer parsers (`parse`)."""

from killswitch.exchanges.mexc.connector import MEXC_CAPABILITIES, MEXC_RATE_LIMITS, MexcExchange
from killswitch.exchanges.mexc.parse import _control_msg, decode_push, order_from_row

__all__ = [
    "MEXC_CAPABILITIES",
    "MEXC_RATE_LIMITS",
    "MexcExchange",
    "_control_msg",
    "decode_push",
    "order_from_row",
]
