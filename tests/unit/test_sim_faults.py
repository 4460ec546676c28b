"""Fault injection: matching, drawing, counting, latency, skew and validated input."""

from __future__ import annotations

import time

import pytest

from killswitch.sim.faults import Fault, FaultKind, FaultSet


def test_a_fault_matches_by_account_and_exact_or_prefix_endpoint() -> None:
    exact = Fault(FaultKind.ERROR_AFTER, account="mm-1", endpoint="/api/v3/order")
    assert exact.matches("mm-1", "/api/v3/order")
    assert not exact.matches("mm-2", "/api/v3/order")
    assert not exact.matches(None, "/api/v3/order")
    assert not exact.matches("mm-1", "/api/v3/openOrders")
    prefix = Fault(FaultKind.ERROR_AFTER, endpoint="/api/v3/open*")
    assert prefix.matches("anyone", "/api/v3/openOrders")
    assert prefix.matches(None, "/api/v3/openOrderList")
    assert not prefix.matches(None, "/api/v3/order")
    everywhere = Fault(FaultKind.STALL)
    assert everywhere.matches(None, "openOrders.cancelAll")


def test_an_expired_or_used_up_fault_no_longer_matches() -> None:
    assert not Fault(FaultKind.STALL, until_s=time.monotonic() - 1).matches(None, "/x")
    assert Fault(FaultKind.STALL, until_s=time.monotonic() + 60).matches(None, "/x")
    assert not Fault(FaultKind.STALL, count=0).matches(None, "/x")


def test_draw_fires_at_most_count_times() -> None:
    faults = FaultSet(seed=1)
    faults.add(Fault(FaultKind.ERROR_BEFORE, count=2))
    fired = [faults.draw(FaultKind.ERROR_BEFORE, None, "/x") for _ in range(4)]
    assert [f is not None for f in fired] == [True, True, False, False]


def test_draw_only_returns_faults_of_the_asked_kind() -> None:
    faults = FaultSet()
    faults.add(Fault(FaultKind.ERROR_AFTER))
    assert faults.draw(FaultKind.ERROR_BEFORE, None, "/x") is None
    assert faults.draw(FaultKind.ERROR_AFTER, None, "/x") is not None


def test_probabilistic_faults_replay_identically_from_the_same_seed() -> None:
    def trial(seed: int) -> list[bool]:
        faults = FaultSet(seed=seed)
        faults.add(Fault(FaultKind.RATE_LIMIT, probability=0.5))
        return [faults.draw(FaultKind.RATE_LIMIT, None, "/x") is not None for _ in range(200)]

    first = trial(42)
    assert first == trial(42)
    assert any(first)
    assert not all(first)
    assert first != trial(43)


def test_active_reports_a_standing_fault_without_using_it_up() -> None:
    faults = FaultSet()
    faults.add(Fault(FaultKind.WS_SILENT, account="mm-1", count=1))
    for _ in range(3):
        assert faults.active(FaultKind.WS_SILENT, "mm-1") is not None
    assert faults.active(FaultKind.WS_SILENT, "mm-2") is None
    assert faults.active(FaultKind.WS_DROP, "mm-1") is None


def test_latency_adds_up_stays_within_jitter_and_is_never_negative() -> None:
    faults = FaultSet(seed=3)
    faults.add(Fault(FaultKind.LATENCY, latency_ms=30, jitter_ms=10))
    faults.add(Fault(FaultKind.LATENCY, endpoint="/slow", latency_ms=100))
    samples = [faults.latency_s(None, "/fast") for _ in range(500)]
    assert all(0.020 <= s <= 0.040 for s in samples)
    assert len(set(samples)) > 1
    assert all(0.120 <= faults.latency_s(None, "/slow") <= 0.140 for _ in range(100))
    wild = FaultSet(seed=3)
    wild.add(Fault(FaultKind.LATENCY, latency_ms=1, jitter_ms=50))
    assert all(wild.latency_s(None, "/x") >= 0.0 for _ in range(500))


def test_clock_skew_is_per_account_and_adds_up() -> None:
    faults = FaultSet()
    faults.add(Fault(FaultKind.CLOCK_SKEW, skew_ms=1500))
    faults.add(Fault(FaultKind.CLOCK_SKEW, account="mm-1", skew_ms=-4000))
    assert faults.skew_ms("mm-1") == -2500
    assert faults.skew_ms("mm-2") == 1500
    assert faults.skew_ms(None) == 1500


def test_faults_get_increasing_ids_and_can_be_removed_or_cleared_by_kind() -> None:
    faults = FaultSet()
    a = faults.add(Fault(FaultKind.STALL))
    b = faults.add(Fault(FaultKind.WS_DROP))
    c = faults.add(Fault(FaultKind.WS_DROP))
    assert (a.id, b.id, c.id) == (1, 2, 3)
    assert faults.remove(a.id)
    assert not faults.remove(a.id)
    faults.clear(FaultKind.WS_DROP)
    assert faults.faults == []
    faults.add(Fault(FaultKind.STALL))
    faults.clear()
    assert faults.to_json() == []


def test_from_json_builds_a_fault_with_a_duration() -> None:
    before = time.monotonic()
    fault = Fault.from_json(
        {"kind": "error_after", "account": "mm-1", "http_status": 504, "duration_s": 30}
    )
    assert fault.kind is FaultKind.ERROR_AFTER
    assert fault.account == "mm-1"
    assert fault.http_status == 504
    assert fault.until_s is not None
    assert before + 30 <= fault.until_s <= time.monotonic() + 30


def test_a_listed_fault_can_be_added_again_from_its_json() -> None:
    faults = FaultSet()
    original = faults.add(Fault(FaultKind.RATE_LIMIT, endpoint="/a*", retry_after_s=7, count=3))
    copy = Fault.from_json(original.to_json())
    assert copy.to_json() == {**original.to_json(), "id": 0}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "meteor_strike"}, "kind"),
        ({"kind": "latency", "latency_ms": "slow"}, "latency_ms"),
        ({"kind": "latency", "latency_ms": -5}, "latency_ms"),
        ({"kind": "rate_limit", "probability": 1.5}, "probability"),
        ({"kind": "error_after", "http_status": 200}, "http_status"),
        ({"kind": "stall", "stall_seconds": 3}, "stall_seconds"),
        ({"kind": "stall", "count": -1}, "count"),
        ({"account": "mm-1"}, "kind"),
    ],
)
def test_from_json_refuses_bad_input_and_names_the_field(
    data: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        Fault.from_json(data)
