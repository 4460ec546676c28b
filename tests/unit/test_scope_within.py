"""Scope.within: whether one scope covers nothing another does not (a scoped reset releases
the latches wholly inside it)."""

from __future__ import annotations

import pytest

from killswitch.model import Scope


@pytest.mark.parametrize(
    ("inner", "outer", "inside"),
    [
        (Scope.of(["mexc"], ["mx-a"]), Scope.of(accounts=["mx-a"]), True),
        (Scope.of(["binance"], ["bn-a"]), Scope.of(accounts=["mx-a"]), False),
        (Scope(), Scope.of(accounts=["mx-a"]), False),  # everything is wider than one account
        (Scope.of(symbols=["BTCUSDT"]), Scope.of(symbols=["BTCUSDT", "ETHUSDT"]), True),
        (Scope(), Scope.of(symbols=["BTCUSDT"]), False),
        (Scope.of(client_order_id_prefix="s7-a"), Scope.of(client_order_id_prefix="s7-"), True),
        (Scope.of(client_order_id_prefix="s8-"), Scope.of(client_order_id_prefix="s7-"), False),
        (Scope.of(symbols=["BTCUSDT"], client_order_id_prefix="x"), Scope(), True),
    ],
)
def test_a_scope_is_within_another_when_the_other_covers_all_it_covers(
    inner: Scope, outer: Scope, inside: bool
) -> None:
    assert inner.within(outer) is inside


def test_within_is_decided_from_the_scopes_alone() -> None:
    # "Venue mexc" is not inside "account mx-a", even where mx-a is the only MEXC account one
    # daemon has: a peer with more accounts must decide the same (review 40).
    assert not Scope.of(["mexc"]).within(Scope.of(accounts=["mx-a"]))
    assert Scope.of(["mexc"], ["mx-a"]).within(Scope.of(["mexc"]))
