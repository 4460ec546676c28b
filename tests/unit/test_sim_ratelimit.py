"""Rate limits in the simulator: fixed weight windows and the 429 -> 418 escalation."""

from __future__ import annotations

from killswitch.sim.ratelimit import BanTracker, WeightWindow


def test_weight_within_the_limit_is_admitted_and_counted() -> None:
    window = WeightWindow(limit=10, window_s=60.0)
    assert window.spend(4, 120.0).ok
    verdict = window.spend(6, 130.0)
    assert verdict.ok
    assert verdict.used == 10
    assert window.remaining(130.0) == 0


def test_weight_over_the_limit_is_refused_until_the_window_ends() -> None:
    window = WeightWindow(limit=10, window_s=60.0)
    window.spend(8, 125.5)
    verdict = window.spend(3, 150.2)
    assert not verdict.ok
    assert verdict.used == 8  # a refused request costs nothing
    assert verdict.retry_after_s == 30  # ceil(180 - 150.2)
    assert window.reset_in_s(150.2) == 180.0 - 150.2


def test_a_new_window_starts_empty() -> None:
    window = WeightWindow(limit=10, window_s=10.0)
    window.spend(10, 5.0)
    assert not window.spend(1, 9.99).ok
    assert window.spend(10, 10.0).ok
    assert window.peek(19.0) == 10
    assert window.peek(20.0) == 0


def test_retry_after_is_at_least_one_second() -> None:
    window = WeightWindow(limit=1, window_s=1.0)
    window.spend(1, 0.0)
    assert window.spend(1, 0.999).retry_after_s == 1


def test_a_request_that_heeds_retry_after_is_served() -> None:
    tracker = BanTracker(strikes_to_ban=3, first_ban_s=120.0)
    assert tracker.check(0.0) is None
    tracker.limited(0.0, 5)
    assert tracker.check(5.0) is None
    assert tracker.strikes == 0


def test_requests_during_a_retry_after_are_refused_with_the_time_left() -> None:
    tracker = BanTracker(strikes_to_ban=3)
    tracker.limited(10.0, 5)
    verdict = tracker.check(12.5)
    assert verdict is not None
    assert not verdict.ok
    assert not verdict.banned
    assert verdict.retry_after_s == 3


def test_ignoring_retry_after_escalates_to_a_418_ban() -> None:
    tracker = BanTracker(strikes_to_ban=3, first_ban_s=120.0)
    tracker.limited(0.0, 10)
    first = tracker.check(1.0)
    second = tracker.check(2.0)
    third = tracker.check(3.0)
    assert first is not None
    assert second is not None
    assert third is not None
    assert not first.banned
    assert not second.banned
    assert third.banned
    assert third.retry_after_s == 120
    during = tracker.check(100.0)
    assert during is not None
    assert during.banned
    assert during.retry_after_s == 23
    assert tracker.check(123.0) is None


def test_each_new_ban_lasts_twice_as_long_up_to_three_days() -> None:
    tracker = BanTracker(strikes_to_ban=1, first_ban_s=120.0)
    now = 0.0
    lengths = []
    for _ in range(14):
        tracker.limited(now, 1)
        verdict = tracker.check(now + 0.5)
        assert verdict is not None
        assert verdict.banned
        lengths.append(verdict.retry_after_s)
        now = tracker.banned_until
    assert lengths[:4] == [120, 240, 480, 960]
    assert max(lengths) == 3 * 24 * 3600
    assert lengths[-1] == 3 * 24 * 3600


def test_clear_lifts_a_ban_and_forgets_the_escalation() -> None:
    tracker = BanTracker(strikes_to_ban=1, first_ban_s=120.0)
    tracker.limited(0.0, 10)
    assert tracker.check(1.0) is not None
    tracker.clear()
    assert tracker.check(2.0) is None
    tracker.limited(2.0, 10)
    verdict = tracker.check(3.0)
    assert verdict is not None
    assert verdict.retry_after_s == 120
