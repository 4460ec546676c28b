"""The time-to-flat lower bound: request counts, rate-limit spans, and the bench workloads."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from killswitch.exchanges import bingx, mexc
from killswitch.exchanges.binance import CAPABILITIES as BINANCE
from killswitch.exchanges.binance import RATE_LIMITS as BINANCE_LIMITS
from killswitch.exchanges.bingx import CAPABILITIES as BINGX
from killswitch.exchanges.mexc import MEXC_CAPABILITIES as MEXC
from killswitch.kill.bound import (
    REQUEST_BUCKETS,
    AccountLoad,
    Bucket,
    cancel_requests,
    loads_of,
    lower_bound,
    windows_span_s,
)
from tests.fixtures.fuzz import FUZZ

CAPS = {"binance": BINANCE, "mexc": MEXC, "bingx": BINGX}
R = 0.030


def test_binance_needs_one_cancel_all_per_symbol_and_lists_ride_along() -> None:
    load = AccountLoad("binance", symbols=5, orders=50, lists=3)
    assert cancel_requests(load, BINANCE) == {"cancel_all": 5}


def test_mexc_covers_five_symbols_per_cancel_all() -> None:
    assert cancel_requests(AccountLoad("mexc", 25, 500), MEXC) == {"cancel_all": 5}
    assert cancel_requests(AccountLoad("mexc", 26, 501), MEXC) == {"cancel_all": 6}


def test_bingx_cancels_the_account_at_once_and_its_oco_lists_by_leg_batches() -> None:
    load = AccountLoad("bingx", symbols=100, orders=2000, lists=100)
    assert cancel_requests(load, BINGX) == {"cancel_all": 1, "cancel_legs": 20}


def test_bingx_lists_go_one_by_one_where_the_venue_refused_leg_ids() -> None:
    load = AccountLoad("bingx", symbols=100, orders=2000, lists=100)
    refused = replace(BINGX, list_legs_by_batch=False)
    assert cancel_requests(load, refused) == {"cancel_all": 1, "cancel_list": 100}
    covered = replace(BINGX, cancel_all_covers_lists=True, lists_coverage=True)
    assert cancel_requests(load, covered) == {"cancel_all": 1}


def test_an_empty_account_needs_no_cancel_and_a_kill_of_empty_accounts_one_round() -> None:
    empty = AccountLoad("binance", 0, 0)
    assert cancel_requests(empty, BINANCE) == {}
    bound = lower_bound([empty, AccountLoad("bingx", 0, 0)], CAPS, R)
    assert bound.rounds == 1
    assert bound.seconds == pytest.approx(R)


def test_a_wave_within_every_limit_costs_two_round_trips() -> None:
    small = [AccountLoad(v, symbols=5, orders=50) for v in ("binance", "mexc", "bingx")]
    bound = lower_bound(small, CAPS, R)
    assert bound.rate_span_s == 0
    assert bound.rounds == 2
    assert bound.seconds == pytest.approx(2 * R)
    assert bound.requests == 5 + 1 + 1


@pytest.mark.parametrize(
    ("weight", "windows", "span_s"),
    [(0, 0, 0.0), (10, 1, 0.0), (11, 2, 0.0), (20, 2, 0.0), (21, 3, 1.0), (100, 10, 8.0)],
)
def test_a_bucket_of_n_windows_spans_n_minus_two_windows_at_best(
    weight: int, windows: int, span_s: float
) -> None:
    bucket = Bucket("ten per second", 10, 1.0)
    assert windows_span_s(weight, bucket) == span_s


def test_one_hundred_bingx_oco_lists_down_three_paths_at_once_take_four_seconds() -> None:
    load = AccountLoad("bingx", symbols=100, orders=2000, lists=100)
    bound = lower_bound([load], CAPS, R)
    # 17 lists a window per UID (2 batches of 5, 2 oco/cancel, 5 single leg cancels): 6 windows.
    assert bound.rate_span_s == pytest.approx(4.0)
    assert bound.seconds == pytest.approx(4.0 + 2 * R)
    assert bound.requests == 1 + 20  # the fewest requests: batches of five lists


def test_one_hundred_bingx_oco_lists_one_by_one_at_two_a_second_take_48_seconds() -> None:
    load = AccountLoad("bingx", symbols=100, orders=2000, lists=100)
    refused = {**CAPS, "bingx": replace(BINGX, list_legs_by_batch=False)}
    assert lower_bound([load], refused, R).rate_span_s == pytest.approx(48.0)


def test_bingx_accounts_behind_one_ip_share_its_per_ip_budget() -> None:
    one = AccountLoad("bingx", symbols=10, orders=100, lists=30)
    alone = lower_bound([one], CAPS, R).rate_span_s
    assert alone == pytest.approx(0.0)  # 30 lists: 2 windows of 17 per UID
    # Four accounts: 120 lists through one IP at 20 a window: 6 windows.
    assert lower_bound([one] * 4, CAPS, R).rate_span_s == pytest.approx(4.0)


def test_binance_symbols_past_two_minutes_of_weight_wait_for_a_third_window() -> None:
    load = AccountLoad("binance", symbols=12_001, orders=12_001)
    assert lower_bound([load], CAPS, R).rate_span_s == pytest.approx(60.0)


def test_workload_l_bound_is_set_by_bingx_oco_lists() -> None:
    loads = [AccountLoad("binance", 100, 2000, 100) for _ in range(2)]
    loads += [AccountLoad("mexc", 25, 500) for _ in range(2)]
    loads += [AccountLoad("bingx", 100, 2000, 100) for _ in range(2)]
    bound = lower_bound(loads, CAPS, R)
    assert sum(a.orders for a in loads) == 9000
    assert bound.requests == 2 * 100 + 2 * 5 + 2 * 21
    # 200 lists through one IP at 20 a window: 10 windows.
    assert bound.seconds == pytest.approx(8.0 + 2 * R)


def test_loads_are_counted_from_book_rows() -> None:
    rows = [("BTCUSDT", None), ("BTCUSDT", "7"), ("BTCUSDT", "7"), ("ETHUSDT", None)]
    assert loads_of([("binance", rows)]) == [AccountLoad("binance", 2, 4, 1, (1,))]


def test_bound_buckets_agree_with_the_connectors_rate_tables() -> None:
    binance_weight = REQUEST_BUCKETS["binance"]["cancel_all"][0][0]
    assert binance_weight.limit == BINANCE_LIMITS.weight_per_window
    assert binance_weight.window_s == BINANCE_LIMITS.window_s
    mexc_bucket = REQUEST_BUCKETS["mexc"]["cancel_all"][0][0]
    assert mexc_bucket.limit == mexc.MEXC_RATE_LIMITS.weight_per_window
    assert mexc_bucket.window_s == mexc.MEXC_RATE_LIMITS.window_s
    for kind, path in (
        ("cancel_list", bingx.OCO_CANCEL),
        ("cancel_all", bingx.CANCEL_OPEN_ORDERS),
        ("cancel_legs", bingx.CANCEL_ORDERS),
    ):
        uid, ip = REQUEST_BUCKETS["bingx"][kind][0][0], REQUEST_BUCKETS["bingx"][kind][1][0]
        assert (uid.limit, uid.window_s, uid.per_ip) == (bingx.ENDPOINT_RPS[path], 1.0, False)
        assert (ip.limit, ip.window_s, ip.per_ip) == (bingx.IP_RPS[path], 1.0, True)


LOADS = st.builds(
    AccountLoad,
    venue=st.sampled_from(["binance", "mexc", "bingx"]),
    symbols=st.integers(0, 500),
    orders=st.integers(0, 20_000),
    lists=st.integers(0, 2_000),
)


@FUZZ
@given(loads=st.lists(LOADS, min_size=1, max_size=6), extra=LOADS, r=st.floats(0.001, 0.5))
def test_more_open_orders_never_lower_the_bound_and_it_is_at_least_one_round(
    loads: list[AccountLoad], extra: AccountLoad, r: float
) -> None:
    base = lower_bound(loads, CAPS, r)
    assert base.seconds >= r
    assert lower_bound([*loads, extra], CAPS, r).seconds >= base.seconds
    bigger = [AccountLoad(a.venue, a.symbols + 1, a.orders + 10, a.lists + 1) for a in loads]
    assert lower_bound(bigger, CAPS, r).seconds >= base.seconds


def test_bingx_verification_reads_of_accounts_behind_one_ip_span_windows_of_their_own() -> None:
    """Every account's verification reads openOrders and oco/openOrderList, 2/s per IP each:
    21 accounts' reads need 11 windows (a span of 9 s) even when their cancels need less."""
    one = AccountLoad("bingx", symbols=5, orders=50)
    assert lower_bound([one] * 2, CAPS, R).rate_span_s == pytest.approx(0.0)
    assert lower_bound([one] * 5, CAPS, R).rate_span_s == pytest.approx(1.0)
    assert lower_bound([one] * 21, CAPS, R).rate_span_s == pytest.approx(9.0)
    idle = AccountLoad("bingx", 0, 0)  # nothing open: still one verification read
    assert lower_bound([idle] * 5, CAPS, R).rate_span_s == pytest.approx(1.0)


def test_bingx_lists_one_to_a_symbol_take_a_batch_each() -> None:
    """`cancelOrders` names one symbol: lists spread one to a symbol cannot share a batch.
    Workload L's BingX accounts (100 lists on 100 symbols each): per IP a window takes 3
    batches of one list and 5 lists one by one, 8 in all: 200 lists need 25 windows."""
    spread = AccountLoad("bingx", 100, 2000, 100, (1,) * 100)
    assert lower_bound([spread] * 2, CAPS, R).rate_span_s == pytest.approx(23.0)
    packed = AccountLoad("bingx", 100, 2000, 100, (5,) * 20)  # as full as batches get
    assert lower_bound([packed] * 2, CAPS, R).rate_span_s == pytest.approx(8.0)
    unknown = AccountLoad("bingx", 100, 2000, 100)  # no spread known: the luckiest
    assert lower_bound([unknown] * 2, CAPS, R).rate_span_s == pytest.approx(8.0)
