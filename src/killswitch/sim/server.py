"""Serve the simulated venues named in a sim TOML file, on loopback: `SimCluster`.

The file (see `sim/example.toml`) names a listen address and, per venue, its accounts and keys,
latency, rate-limit scale, seed, faults, seed orders and lists, and workload generators::

    host = "127.0.0.1"

    [venues.binance]                 # the table name is the venue's name; dialect defaults to it
    port = 0                         # 0: any free port
    latency_ms = 30
    [[venues.binance.accounts]]
    name = "mm-1"
    api_key = "..."
    secret = "..."

A parse or validation error names the field (`venues.binance.accounts[0].secret: ...`). Dialect
classes are imported only for the venues the file names.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib
import inspect
import logging
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Self

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from killswitch.config import dotted_path
from killswitch.sim.book import OrderSpec
from killswitch.sim.faults import FaultSpec
from killswitch.sim.venue import SimAccount, SimVenue, VenueSettings, generate_workload

log = logging.getLogger(__name__)

DIALECTS: dict[str, str] = {
    "binance": "killswitch.sim.binance:BinanceSim",
    "mexc": "killswitch.sim.mexc:MexcSim",
    "bingx": "killswitch.sim.bingx:BingxSim",
}


class SimConfigError(ValueError):
    """A sim config that cannot be served; `errors` holds one `field: problem` line each."""

    def __init__(self, source: str, errors: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(errors))
        self.source = source
        self.errors = errors


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccountConfig(_Section):
    """One API key. For an Ed25519 key, `secret` is the PUBLIC key (base64 raw or PEM)."""

    name: str = Field(min_length=1)
    api_key: str = Field(min_length=1)
    key_type: Literal["hmac", "ed25519"] = "hmac"  # before `secret`: its check depends on it
    secret: str = Field(min_length=1, repr=False)

    @field_validator("secret")
    @classmethod
    def _check_public_key(cls, secret: str, info: ValidationInfo) -> str:
        if info.data.get("key_type") == "ed25519":
            check_ed25519_public_key(secret)
        return secret


class OrderConfig(_Section):
    """A seed order; `account` may be left out when the venue has one account."""

    account: str | None = None
    symbol: str = Field(min_length=1)
    side: Literal["BUY", "SELL"] = "BUY"
    type: str = "LIMIT"
    price: Decimal = Field(Decimal(1), gt=0)
    quantity: Decimal = Field(Decimal(1), gt=0)
    client_order_id: str = ""
    time_in_force: str = "GTC"
    stop_price: Decimal = Field(Decimal(0), ge=0)

    def spec(self) -> OrderSpec:
        return OrderSpec(
            symbol=self.symbol,
            side=self.side,
            order_type=self.type,
            price=self.price,
            quantity=self.quantity,
            client_order_id=self.client_order_id,
            time_in_force=self.time_in_force,
            stop_price=self.stop_price,
        )


class LegConfig(OrderConfig):
    """One leg of a seed order list (its account is the list's)."""


class ListConfig(_Section):
    """A seed order list (Binance OCO/OTO, BingX OCO)."""

    account: str | None = None
    contingency_type: Literal["OCO", "OTO"] = "OCO"
    list_client_order_id: str = ""
    legs: list[LegConfig] = Field(min_length=2, max_length=3)

    @model_validator(mode="after")
    def _one_symbol(self) -> Self:
        if len({leg.symbol for leg in self.legs}) != 1:
            raise ValueError("every leg of a list must have the same symbol")
        if any(leg.account is not None for leg in self.legs):
            raise ValueError("set `account` on the list, not on its legs")
        return self


class GenerateConfig(_Section):
    """A generated workload: `per_symbol` orders on each symbol, some as two-leg OCO lists."""

    account: str | None = None
    symbols: list[str] = Field(min_length=1)
    per_symbol: int = Field(10, ge=1, le=100_000)
    list_fraction: float = Field(0.0, ge=0.0, le=1.0)
    client_id_prefix: str = ""


class VenueConfig(_Section):
    """One simulated venue."""

    dialect: str | None = None  # binance | mexc | bingx | package.module:Class
    host: str | None = None  # default: the file's `host`
    port: int = Field(0, ge=0, le=65535)
    # A request's round trip: the venue acts on it half way (its pushes leave then), and its
    # answer leaves a whole one after it came, the venue's own work inside it.
    latency_ms: float = Field(0.0, ge=0.0)
    jitter_ms: float = Field(0.0, ge=0.0)
    rate_limit_scale: float = Field(1.0, gt=0.0)
    seed: int | None = None  # default: the file's `seed`
    strikes_to_ban: int = Field(3, ge=1)
    first_ban_s: float = Field(120.0, gt=0.0)
    # A request served this soon after a 429 (beyond the latency) was in flight when it left:
    # refused, but no strike toward a 418 (Binance bans for "failing to back off after
    # receiving 429s"). 0 counts every request that reaches the venue inside the wait.
    ban_grace_s: float = Field(0.05, ge=0.0)
    fill_fraction: float = Field(0.0, ge=0.0, le=1.0)
    fill_interval_s: float = Field(1.0, gt=0.0)
    ping_interval_s: float | None = Field(None, gt=0.0)
    symbols: list[str] = Field(default_factory=list)
    accounts: list[AccountConfig] = Field(min_length=1)
    faults: list[FaultSpec] = Field(default_factory=list)
    orders: list[OrderConfig] = Field(default_factory=list)
    lists: list[ListConfig] = Field(default_factory=list)
    generate: list[GenerateConfig] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)  # the dialect's keyword arguments

    @field_validator("accounts")
    @classmethod
    def _unique_accounts(cls, accounts: list[AccountConfig]) -> list[AccountConfig]:
        for attr in ("name", "api_key"):
            values = [getattr(a, attr) for a in accounts]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                shown = dupes if attr == "name" else [f"{d[:4]}..." for d in dupes]
                raise ValueError(f"duplicate account {attr}: {', '.join(shown)}")
        return accounts

    @model_validator(mode="after")
    def _known_accounts(self) -> Self:
        names = [a.name for a in self.accounts]
        for section in ("orders", "lists", "generate", "faults"):
            for i, item in enumerate(getattr(self, section)):
                if item.account is None and section != "faults" and len(names) > 1:
                    raise ValueError(
                        f"{section}[{i}].account: required when the venue has several accounts"
                    )
                if item.account is not None and item.account not in names:
                    raise ValueError(
                        f"{section}[{i}].account: no account {item.account!r} (have {names})"
                    )
        return self

    def account_name(self, name: str | None) -> str:
        return name if name is not None else self.accounts[0].name


class SimConfig(_Section):
    """A sim TOML file."""

    host: str = "127.0.0.1"
    seed: int | None = None
    venues: dict[str, VenueConfig] = Field(min_length=1)


def check_ed25519_public_key(text: str) -> None:
    """Raise `ValueError` unless `text` is an Ed25519 public key, PEM or base64 of 32 bytes."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = load_pem_public_key(text.encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the PEM public key is not Ed25519")
        return
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError("an Ed25519 public key is PEM or base64 of 32 raw bytes") from exc
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 raw bytes, got {len(raw)}")


def field_path(loc: tuple[int | str, ...]) -> str:
    """`('venues', 'binance', 'accounts', 0, 'secret')` -> `venues.binance.accounts[0].secret`."""
    return dotted_path(loc) or "(file)"


def _validation_lines(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{field_path(tuple(err['loc']))}: {msg}")
    return lines


def parse_config(text: str, source: str = "<sim config>") -> SimConfig:
    """Parse and validate a sim TOML document; raise `SimConfigError` naming each bad field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SimConfigError(source, [f"not valid TOML: {exc}"]) from exc
    try:
        return SimConfig.model_validate(data)
    except ValidationError as exc:
        raise SimConfigError(source, _validation_lines(exc)) from exc


def load_config(path: str | Path) -> SimConfig:
    """Read and validate a sim TOML file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SimConfigError(str(path), [f"cannot read: {exc.strerror or exc}"]) from exc
    return parse_config(text, str(path))


def dialect_class(name: str, dialect: str | None) -> type[SimVenue]:
    """Import the `SimVenue` subclass serving venue `name` (lazily: only what is used)."""
    target = DIALECTS.get(dialect or name, dialect or "")
    module_name, _, class_name = target.partition(":")
    if not module_name or not class_name:
        raise ValueError(
            f"unknown dialect {dialect or name!r}: use one of {sorted(DIALECTS)} "
            "or `package.module:Class`"
        )
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, SimVenue)):
        raise TypeError(f"{target} is not a SimVenue subclass")
    return cls


def build_venue(name: str, venue: VenueConfig, config: SimConfig) -> SimVenue:
    """Construct (not start) one venue from its validated config."""
    cls = dialect_class(name, venue.dialect)
    settings = VenueSettings(
        accounts=[
            SimAccount(name=a.name, api_key=a.api_key, secret=a.secret, key_type=a.key_type)
            for a in venue.accounts
        ],
        host=venue.host or config.host,
        port=venue.port,
        latency_ms=venue.latency_ms,
        jitter_ms=venue.jitter_ms,
        seed=venue.seed if venue.seed is not None else config.seed,
        strikes_to_ban=venue.strikes_to_ban,
        first_ban_s=venue.first_ban_s,
        ban_grace_s=venue.ban_grace_s,
        fill_fraction=venue.fill_fraction,
        fill_interval_s=venue.fill_interval_s,
        ping_interval_s=venue.ping_interval_s,
        rate_limit_scale=venue.rate_limit_scale,
        faults=[f.to_fault() for f in venue.faults],
        symbols=list(venue.symbols),
    )
    options = dict(venue.options)
    # A dialect that takes its own symbol list gets the venue's `symbols` unless set explicitly.
    if (
        venue.symbols
        and "symbols" not in options
        and "symbols" in inspect.signature(cls.__init__).parameters
    ):
        options["symbols"] = list(venue.symbols)
    return cls(settings, **options)


def seed_venue(sim: SimVenue, venue: VenueConfig) -> tuple[int, int]:
    """Place the configured seed orders, lists and generated workloads; return the counts."""
    orders: dict[str, list[OrderSpec]] = {}
    lists: dict[str, list[tuple[list[OrderSpec], str, str]]] = {}
    for order in venue.orders:
        orders.setdefault(venue.account_name(order.account), []).append(order.spec())
    for lst in venue.lists:
        lists.setdefault(venue.account_name(lst.account), []).append(
            ([leg.spec() for leg in lst.legs], lst.contingency_type, lst.list_client_order_id)
        )
    for gen in venue.generate:
        gen_orders, gen_lists = generate_workload(
            symbols=list(gen.symbols),
            per_symbol=gen.per_symbol,
            list_fraction=gen.list_fraction if sim.supports_lists() else 0.0,
            client_id_prefix=gen.client_id_prefix,
            rng=sim.rng,
        )
        name = venue.account_name(gen.account)
        orders.setdefault(name, []).extend(gen_orders)
        lists.setdefault(name, []).extend(gen_lists)
    n_orders = n_lists = 0
    for name in sorted(orders.keys() | lists.keys()):
        placed = sim.seed(sim.accounts[name], orders.get(name, []), lists.get(name, []))
        n_orders += placed[0]
        n_lists += placed[1]
    return n_orders, n_lists


class SimCluster:
    """Every venue of one sim config: built at construction, served by `start()`."""

    def __init__(self, config: SimConfig, source: str = "<sim config>") -> None:
        self.config = config
        self.source = source
        self.venues: dict[str, SimVenue] = {}
        errors = []
        for name, venue in config.venues.items():
            try:
                self.venues[name] = build_venue(name, venue, config)
            except ImportError as exc:
                errors.append(f"venues.{name}.dialect: cannot import: {exc}")
            except (TypeError, ValueError) as exc:
                errors.append(f"venues.{name}: {exc}")
        if errors:
            raise SimConfigError(source, errors)
        self._started: list[str] = []

    @classmethod
    def from_file(cls, path: str | Path) -> SimCluster:
        return cls(load_config(path), str(path))

    @classmethod
    def from_toml(cls, text: str, source: str = "<sim config>") -> SimCluster:
        return cls(parse_config(text, source), source)

    async def start(self) -> None:
        """Serve every venue and place its seed orders. On a failure, stop what started."""
        try:
            for name, sim in self.venues.items():
                await sim.start()
                self._started.append(name)
                orders, lists = seed_venue(sim, self.config.venues[name])
                log.info(
                    "sim venue serving venue=%s dialect=%s rest_url=%s accounts=%d "
                    "seeded_orders=%d seeded_lists=%d",
                    name,
                    sim.name,
                    sim.base_url,
                    len(sim.accounts),
                    orders,
                    lists,
                )
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every started venue (concurrently). Safe to call twice."""
        started, self._started = self._started, []
        if not started:
            return
        results = await asyncio.gather(
            *(self.venues[name].stop() for name in started), return_exceptions=True
        )
        for name, result in zip(started, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                log.error("sim venue failed to stop venue=%s", name, exc_info=result)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def describe(self) -> list[dict[str, Any]]:
        """Per venue: name, dialect, REST and websocket URLs, accounts (names and keys only)."""
        out = []
        for name, sim in self.venues.items():
            info = sim.describe()
            out.append(
                {
                    **info,
                    "venue": name,
                    "dialect": sim.name,
                    "accounts": [
                        {"name": a.name, "api_key": a.api_key, "key_type": a.key_type}
                        for a in sim.accounts.values()
                    ],
                }
            )
        return out

    def secrets(self) -> list[str]:
        """Every configured account secret, for log redaction."""
        return [a.secret for sim in self.venues.values() for a in sim.accounts.values()]
