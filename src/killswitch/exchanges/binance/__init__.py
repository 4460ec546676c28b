"""Binance Spot: the connector (`connector`), its ws-api session (`session`), the user-data
stream (`stream`) and the answer and frame parsers (`parse`)."""

from killswitch.exchanges.binance.connector import CAPABILITIES, RATE_LIMITS, BinanceExchange
from killswitch.exchanges.binance.parse import (
    cancel_ack,
    execution_report_event,
    list_status_event,
    parse_frame,
)
from killswitch.exchanges.binance.session import ws_api_url

__all__ = [
    "CAPABILITIES",
    "RATE_LIMITS",
    "BinanceExchange",
    "cancel_ack",
    "execution_report_event",
    "list_status_event",
    "parse_frame",
    "ws_api_url",
]
