"""Load and validate the daemon's configuration.

Sources, highest priority first:

1. `KILLSWITCH_*` environment variables, `__` between nested names
   (`KILLSWITCH_KAFKA__BOOTSTRAP_SERVERS`);
2. files in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), named like the variable in
   lower case (`killswitch_accounts__binance__mm-1__api_secret`, `killswitch_kafka__sasl_password`);
3. the TOML file (`--config`, else `$KILLSWITCH_CONFIG`, else `/etc/killswitch/killswitch.toml`).

`accounts` is a list in TOML; the other two sources address one account by venue and name
(`accounts__<venue>__<name>__<field>`) and are overlaid on the matching list entry
(`killswitch.settings_sources`), so keys never need to sit in the TOML file. A variable naming
a field that does not exist fails the start (a typo would otherwise be ignored silently):
`killswitch.config` finds the file, checks the variables and loads.
"""

from __future__ import annotations

import base64
import contextvars
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from killswitch.model import (
    SYMBOL_FORMS,
    VENUES,
    AccountRef,
    Scope,
    is_venue_symbol,
    unmatched,
)
from killswitch.settings_sources import AccountOverlay

ENV_PREFIX = "KILLSWITCH_"
CREDENTIALS_PREFIX = "killswitch_"

Venue = Literal["binance", "mexc", "bingx"]
TriggerMode = Literal["kill", "cancel"]

DEFAULT_URLS: dict[str, tuple[str, str]] = {
    "binance": ("https://api.binance.com", "wss://ws-api.binance.com:443/ws-api/v3"),
    "mexc": ("https://api.mexc.com", "wss://wbs-api.mexc.com/ws"),
    "bingx": ("https://open-api.bingx.com", "wss://open-api-ws.bingx.com/market"),
}


class Section(BaseModel):
    """A section of the configuration: frozen, and a key it does not know is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# A validation error about some items of a list: `ctx["items"]` holds (index, message) pairs,
# and `config.describe_validation_error` gives each item its own line, `field[index]: message`.
ITEM_ERRORS = "item_errors"


class ScopeSettings(BaseModel):
    """What an alert, a `fire` request, a heartbeat or a rule covers; an empty list means all."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    venues: list[Venue] = []
    accounts: list[str] = Field(default=[], max_length=1000)
    symbols: list[str] = Field(default=[], max_length=1000)
    # "" would read as "no prefix": a typo must not widen a strategy's scope to everything.
    client_order_id_prefix: str | None = Field(default=None, min_length=1, max_length=36)

    @field_validator("venues", mode="before")
    @classmethod
    def _known_venues(cls, venues: object) -> object:
        if not isinstance(venues, list) or not all(isinstance(v, str) for v in venues):
            return venues  # the list's own validation says what is wrong
        lowered = [v.strip().lower() for v in venues]
        unknown = sorted(set(lowered) - set(VENUES))
        if unknown:
            raise ValueError(f"unknown venue(s) {unknown}; known: {list(VENUES)}")
        return lowered

    @field_validator("accounts", "symbols")
    @classmethod
    def _no_empty_names(cls, names: list[str]) -> list[str]:
        # An empty symbol matches no order: the kill would be flat at once, of nothing.
        if any(not n for n in names):
            raise ValueError("names must not be empty")
        return names

    def to_scope(self) -> Scope:
        """Return the domain scope this section describes."""
        return Scope.of(self.venues, self.accounts, self.symbols, self.client_order_id_prefix)


class AccountSettings(Section):
    """One exchange account the daemon can cancel on."""

    venue: Venue
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    rest_url: str = ""
    ws_url: str = ""
    key_type: Literal["hmac", "ed25519"] = "hmac"
    api_key: SecretStr
    api_secret: SecretStr
    symbols: list[str] = []
    timeout_s: float = Field(default=5.0, gt=0)
    recv_window_ms: int = Field(default=5000, gt=0, le=60000)
    dead_mans_switch_s: int = 0

    @field_validator("symbols")
    @classmethod
    def _check_symbol_form(cls, symbols: list[str], info: ValidationInfo) -> list[str]:
        # The connectors match the venue's rows by the exact string: a symbol in another
        # venue's form matches no order, and a kill by it is refused by the venue.
        venue = info.data.get("venue")  # absent when the venue itself is invalid
        problems: list[tuple[int, str]] = []
        for i, symbol in enumerate(symbols):
            if not symbol.strip():
                problems.append((i, "must not be empty"))
            elif venue in SYMBOL_FORMS and not is_venue_symbol(venue, symbol):
                problems.append((i, f"{venue} symbols are {SYMBOL_FORMS[venue]}"))
        if problems:
            summary = "; ".join(f"[{i}] {message}" for i, message in problems)
            raise PydanticCustomError(
                ITEM_ERRORS, "{summary}", {"summary": summary, "items": problems}
            )
        return symbols

    @field_validator("api_key", "api_secret")
    @classmethod
    def _not_blank(cls, secret: SecretStr) -> SecretStr:
        # A blank key would be refused by the venue at the first kill, not here: say it now.
        if not secret.get_secret_value().strip():
            raise ValueError("must not be empty")
        return secret

    @model_validator(mode="after")
    def _check_venue_options(self) -> AccountSettings:
        rest, ws = DEFAULT_URLS[self.venue]
        # Frozen model: defaults that depend on another field are filled in here.
        if not self.rest_url:
            object.__setattr__(self, "rest_url", rest)
        if not self.ws_url:
            object.__setattr__(self, "ws_url", ws)
        if self.key_type == "ed25519" and self.venue != "binance":
            raise ValueError("key_type ed25519 is only supported for binance")
        if self.key_type == "ed25519" and not _ed25519_key_form(self.api_secret):
            raise ValueError(
                "api_secret: an ed25519 key is a PEM private key or base64 of its 32 raw bytes"
            )
        if self.dead_mans_switch_s:
            if self.venue != "bingx":
                raise ValueError("dead_mans_switch_s: only bingx has a native dead man's switch")
            if not 10 <= self.dead_mans_switch_s <= 120:
                raise ValueError("dead_mans_switch_s must be 0 (off) or between 10 and 120")
        return self

    @property
    def label(self) -> str:
        return f"{self.venue}/{self.name}"


def _ed25519_key_form(secret: SecretStr) -> bool:
    """Whether `secret` looks like an Ed25519 private key: PEM, or base64 of 32 raw bytes (its
    parse and its signature are the connector's; this only catches what cannot be one)."""
    text = secret.get_secret_value().strip()
    if text.startswith("-----BEGIN"):
        return True
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except ValueError:
        return False


class KafkaSettings(Section):
    """The alert bus: where alerts come from and where events go."""

    enabled: bool = True
    bootstrap_servers: str = "localhost:9092"
    alerts_topic: str = "risk.alerts"
    events_topic: str = "risk.killswitch.events"
    dead_letter_topic: str = "risk.alerts.dlq"
    latch_topic: str = "risk.killswitch.latch"
    group_id: str = "killswitch"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    alert_hmac_key: SecretStr | None = None
    allow_reset: bool = False
    alert_ttl_ms: int | None = Field(default=None, gt=0)
    # A start with no committed offset (a new group, or offsets the broker expired or lost):
    # alerts up to this old when the daemon started are read, older ones are history and
    # never replayed into kills (kafka/alerts.py says how the start is found).
    start_max_age_ms: int = Field(default=600_000, ge=0)
    event_buffer: int = Field(default=10000, gt=0)
    # Replicas: share the latch over `latch_topic`. Each replica needs its own `group_id`;
    # `replica_id` names it in latch records and keys its events (default group_id@hostname).
    share_latch: bool = True
    replica_id: str | None = Field(default=None, min_length=1)

    def replica_name(self) -> str:
        """Return this daemon's name among replicas."""
        return self.replica_id or f"{self.group_id}@{socket.gethostname()}"

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise ValueError(f"sasl_mechanism is required with {self.security_protocol}")
        return self


class EngineSettings(Section):
    """How hard and how long a kill tries."""

    deadline_s: float = Field(default=30.0, gt=0)
    retry_initial_s: float = Field(default=0.05, gt=0)
    retry_max_s: float = Field(default=2.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    quiet_window_s: float = Field(default=2.0, ge=0)
    sweep_interval_s: float = Field(default=15.0, gt=0)
    grace_period_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _check_retry_bounds(self) -> EngineSettings:
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must be >= retry_initial_s")
        return self


class StreamSettings(Section):
    """User-data stream upkeep."""

    reconcile_interval_s: float = Field(default=30.0, gt=0)
    backoff_initial_s: float = Field(default=0.2, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)


class HeartbeatSettings(Section):
    """A producer whose silence for `timeout_s` triggers a kill or cancel."""

    source: str = Field(min_length=1)
    timeout_s: float = Field(gt=0)
    mode: TriggerMode = "kill"
    scope: ScopeSettings = ScopeSettings()


class RuleSettings(Section):
    """A local risk rule evaluated on one account's user-data stream.

    `limit` is in the rule's unit: `fill_notional` quote currency filled per `window_s`;
    `order_rate` new orders per second, averaged over `window_s`; `stream_down` seconds the
    stream may stay not live (and, with `silent_s`, seconds it may stay live without an event).
    """

    kind: Literal["fill_notional", "order_rate", "stream_down"]
    venue: Venue
    account: str
    limit: float = Field(gt=0)
    window_s: float = Field(default=60.0, gt=0)
    silent_s: float | None = Field(default=None, gt=0)  # stream_down only; None: idle is normal
    mode: TriggerMode = "kill"
    scope: ScopeSettings | None = None  # None: the rule's own account

    @model_validator(mode="after")
    def _check_silence(self) -> RuleSettings:
        if self.silent_s is not None and self.kind != "stream_down":
            raise ValueError("silent_s applies to stream_down rules only")
        return self


class LimitsSettings(Section):
    """The venues' limits this daemon shares with others."""

    # Daemons that spend the same venue limits at once: this one, its replicas (the same
    # accounts), and any daemon sending from the same IP (shards). Each plans for 1/daemons
    # of every rate limit and error allowance, per IP and per account.
    daemons: int = Field(default=1, ge=1, le=16)


# BingX: 60 websockets per IP (§3.4); its cancelAllAfter, 2/s per IP, re-armed 3 times per
# timeout per account: at most this many re-arms per second across the daemons of an IP.
BINGX_STREAMS_PER_IP = 60
BINGX_ERROR_ALLOWANCE = 20  # error answers per API per 8 min before a lock (budget.ErrorCounter)
# The share of it one daemon needs: a kill may spend its share but one, after latched sweeps
# spent half of it, and needs 2 (its verification and confirming reads, each maybe "No data").
BINGX_SHARE_NEEDED = 5
BINGX_REARMS_PER_S = 1.5


class ReadinessSettings(Section):
    """How often the daemon checks each account's readiness (`killswitch.readiness`)."""

    interval_s: float = Field(default=300.0, gt=0)
    timeout_s: float = Field(default=15.0, gt=0)
    stream_grace_s: float = Field(default=60.0, ge=0)


class ControlSettings(Section):
    """The local operator socket."""

    socket_path: Path = Path("/run/killswitch/control.sock")


class MetricsSettings(Section):
    """The Prometheus endpoint (off by default)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class LoggingSettings(Section):
    """Log level and line format (`auto`: JSON unless stdout is a terminal)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "killswitch_config_file", default=None
)


class Settings(BaseSettings):
    """The whole configuration of one daemon."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    state_dir: Path = Path("/var/lib/killswitch")
    accounts: list[AccountSettings] = Field(min_length=1)
    kafka: KafkaSettings = KafkaSettings()
    engine: EngineSettings = EngineSettings()
    streams: StreamSettings = StreamSettings()
    heartbeats: list[HeartbeatSettings] = []
    rules: list[RuleSettings] = []
    readiness: ReadinessSettings = ReadinessSettings()
    limits: LimitsSettings = LimitsSettings()
    control: ControlSettings = ControlSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        credentials = NestedSecretsSettingsSource(
            file_secret_settings,
            secrets_prefix=CREDENTIALS_PREFIX,
            secrets_nested_delimiter="__",
            secrets_dir_missing="error",
        )
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_config_file.get())
        return (init_settings, AccountOverlay(settings_cls, [env_settings, credentials, toml]))

    @classmethod
    def from_sources(cls, toml_file: Path | None, secrets_dir: str | None) -> Settings:
        """Read the environment, the credentials in `secrets_dir` and `toml_file` (None: none)."""
        token = _config_file.set(toml_file)
        try:
            return cls(_secrets_dir=secrets_dir)
        finally:
            _config_file.reset(token)

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        seen: set[tuple[str, str]] = set()
        for account in self.accounts:
            key = (account.venue, account.name.casefold())
            if key in seen:
                raise ValueError(f"accounts: {account.label} is configured twice")
            seen.add(key)
        refs = [AccountRef(a.venue, a.name) for a in self.accounts]
        problems: list[str] = []
        for i, rule in enumerate(self.rules):
            if AccountRef(rule.venue, rule.account) not in refs:
                problems.append(f"rules[{i}]: no account {rule.venue}/{rule.account} in accounts")
        # A scope naming something unconfigured would fire a kill of nothing that looks done.
        scoped = [(f"heartbeats[{i}].scope", hb.scope) for i, hb in enumerate(self.heartbeats)]
        scoped += [(f"rules[{i}].scope", r.scope) for i, r in enumerate(self.rules) if r.scope]
        configured = ", ".join(str(ref) for ref in refs)
        for where, scope in scoped:
            problems += [
                f"{where}.{m.field}: {m.message} (configured: {configured})"
                for m in unmatched(scope.to_scope(), refs)
            ]
        problems += self._venue_limit_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _venue_limit_problems(self) -> list[str]:
        """Configurations no daemon can hold within BingX's per-IP limits (review 46)."""
        daemons = self.limits.daemons
        bingx = [a for a in self.accounts if a.venue == "bingx"]
        problems = []
        if len(bingx) * daemons > BINGX_STREAMS_PER_IP:
            problems.append(
                f"accounts: {len(bingx)} bingx accounts x limits.daemons {daemons} need more "
                f"than the {BINGX_STREAMS_PER_IP} websockets BingX allows per IP"
            )
        if bingx and BINGX_ERROR_ALLOWANCE // daemons < BINGX_SHARE_NEEDED:
            problems.append(
                f"limits.daemons: {daemons} daemons leave each "
                f"{BINGX_ERROR_ALLOWANCE // daemons} of the {BINGX_ERROR_ALLOWANCE} error "
                "answers BingX allows an API per 8 minutes before it locks it; each needs "
                f"{BINGX_SHARE_NEEDED} (latched sweeps may spend half, and a kill's verification "
                "and confirming reads may each be answered 'No data', exchange-apis.md §3.7): "
                f"at most {BINGX_ERROR_ALLOWANCE // BINGX_SHARE_NEEDED} daemons may share BingX "
                "accounts (reviews 73, 75: with more, a kill that emptied an account ended failed)"
            )
        rearms = daemons * sum(3 / a.dead_mans_switch_s for a in bingx if a.dead_mans_switch_s)
        if rearms > BINGX_REARMS_PER_S:
            problems.append(
                f"accounts: bingx dead_mans_switch_s re-arms {rearms:.2f} times a second "
                f"(3 per timeout per account, x limits.daemons {daemons}), more than the "
                f"{BINGX_REARMS_PER_S}/s its per-IP limit of 2/s leaves: timers would fire on "
                "healthy accounts; raise the timeouts or switch some off"
            )
        return problems

    def secret_values(self) -> list[str]:
        """Return every configured secret in clear, for the log redaction filter."""
        found = [s.get_secret_value() for s in _walk_secrets(self)]
        return [s for s in found if s]

    def account(self, venue: str, name: str) -> AccountSettings:
        """Return the account configured as `venue`/`name`."""
        for account in self.accounts:
            if account.venue == venue and account.name == name:
                return account
        raise KeyError(f"{venue}/{name}")


def _walk_secrets(model: BaseModel) -> Iterator[SecretStr]:
    for name in type(model).model_fields:
        yield from _secrets_in(getattr(model, name))


def _secrets_in(value: object) -> Iterator[SecretStr]:
    if isinstance(value, SecretStr):
        yield value
    elif isinstance(value, BaseModel):
        yield from _walk_secrets(value)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secrets_in(item)
