"""Settings: sources and their priority, credentials, validation messages, check-config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from killswitch.cli import main, to_toml
from killswitch.config import ConfigError, load_settings, unknown_env_vars
from killswitch.settings import DEFAULT_URLS, KafkaSettings, ScopeSettings, Settings

BASE = """
[[accounts]]
venue = "binance"
name = "mm-1"
api_key = "binance-key-0001"
api_secret = "binance-secret-0001"
"""

SECRET = "s3cr3t-value-that-must-never-show"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for var in list(os.environ):
        if var.upper().startswith("KILLSWITCH_") or var == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(var)


def write(tmp_path: Path, text: str, name: str = "killswitch.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors_of(path: Path | None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.errors


def test_an_account_gets_its_venues_real_endpoints_by_default(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE))

    account = settings.accounts[0]
    assert (account.rest_url, account.ws_url) == DEFAULT_URLS["binance"]
    assert account.api_secret.get_secret_value() == "binance-secret-0001"
    assert settings.engine.grace_period_s == 10.0
    assert settings.control.socket_path == Path("/run/killswitch/control.sock")


def test_a_config_without_accounts_fails_naming_accounts(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, "[kafka]\nenabled = false\n"))

    assert errors == ["accounts: required, not set"]


def test_an_empty_account_list_fails_naming_accounts(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, "accounts = []\n"))

    assert len(errors) == 1
    assert errors[0].startswith("accounts: ")


def test_a_missing_secret_is_reported_with_its_field_path(tmp_path: Path) -> None:
    text = BASE + '\n[[accounts]]\nvenue = "mexc"\nname = "m1"\napi_key = "k"\n'

    assert errors_of(write(tmp_path, text)) == ["accounts[1].api_secret: required, not set"]


def test_a_misspelt_key_in_a_section_is_reported_as_unknown(tmp_path: Path) -> None:
    text = BASE + "\n[engine]\ndeadline = 5\n"

    assert errors_of(write(tmp_path, text)) == ["engine.deadline: unknown setting (no such field)"]


def test_a_misspelt_top_level_key_is_reported_as_unknown(tmp_path: Path) -> None:
    text = 'statedir = "/x"\n' + BASE

    assert errors_of(write(tmp_path, text)) == ["statedir: unknown setting (no such field)"]


def test_error_lines_never_echo_the_rejected_value(tmp_path: Path) -> None:
    text = BASE.replace('name = "mm-1"', 'name = "mm-1"\nrecv_window_ms = "' + SECRET + '"')

    errors = errors_of(write(tmp_path, text))

    assert errors[0].startswith("accounts[0].recv_window_ms: ")
    assert SECRET not in "\n".join(errors)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            'venue = "mexc"\nname = "x"\nkey_type = "ed25519"',
            "accounts[1]: key_type ed25519 is only supported for binance",
        ),
        (
            'venue = "bingx"\nname = "x"\ndead_mans_switch_s = 5',
            "accounts[1]: dead_mans_switch_s must be 0 (off) or between 10 and 120",
        ),
        (
            'venue = "binance"\nname = "x"\ndead_mans_switch_s = 30',
            "accounts[1]: dead_mans_switch_s: only bingx has a native dead man's switch",
        ),
        ('venue = "kraken"\nname = "x"', "accounts[1].venue: "),
    ],
)
def test_venue_specific_account_options_are_checked(
    tmp_path: Path, extra: str, expected: str
) -> None:
    text = BASE + f'\n[[accounts]]\n{extra}\napi_key = "k"\napi_secret = "s"\n'

    errors = errors_of(write(tmp_path, text))

    assert len(errors) == 1
    assert errors[0].startswith(expected)


BINGX_FORM = 'bingx symbols are upper case, base and quote joined by a hyphen, like "BTC-USDT"'
BINANCE_FORM = 'binance symbols are upper case letters and digits with no separator, like "BTCUSDT"'
MEXC_FORM = BINANCE_FORM.replace("binance", "mexc")


@pytest.mark.parametrize(
    ("venue", "symbols", "expected"),
    [
        ("bingx", '["BTCUSDT"]', [f"accounts[1].symbols[0]: {BINGX_FORM}"]),
        (
            "bingx",
            '["BTC-USDT", "eth-usdt", "SOL_USDT", "BTC-USDT-X"]',
            [f"accounts[1].symbols[{i}]: {BINGX_FORM}" for i in (1, 2, 3)],
        ),
        ("binance", '["BTC-USDT"]', [f"accounts[1].symbols[0]: {BINANCE_FORM}"]),
        ("binance", '["ETHUSDT", "btcusdt"]', [f"accounts[1].symbols[1]: {BINANCE_FORM}"]),
        (
            "mexc",
            '["BTC_USDT", "BTC/USDT"]',
            [f"accounts[1].symbols[{i}]: {MEXC_FORM}" for i in (0, 1)],
        ),
        ("mexc", '["BTCUSDT", " "]', ["accounts[1].symbols[1]: must not be empty"]),
    ],
)
def test_an_accounts_symbols_in_another_venues_form_are_rejected_naming_each_item(
    tmp_path: Path, venue: str, symbols: str, expected: list[str]
) -> None:
    # The connectors match the venue's rows by exact symbol: "BTCUSDT" on a BingX account
    # would match no order, and a kill by it would be refused by the venue.
    account = f'venue = "{venue}"\nname = "x"\nsymbols = {symbols}'
    text = BASE + f'\n[[accounts]]\n{account}\napi_key = "k"\napi_secret = "s"\n'

    assert errors_of(write(tmp_path, text)) == expected


@pytest.mark.parametrize(
    ("venue", "symbols"),
    [
        ("bingx", ["BTC-USDT", "1000PEPE-USDT", "ETH-BTC"]),
        ("binance", ["BTCUSDT", "1000SATSUSDT", "这是测试币456"]),
        ("mexc", ["BTCUSDT", "ETHUSDC"]),
    ],
)
def test_an_accounts_symbols_in_its_venues_form_are_accepted(
    venue: str, symbols: list[str]
) -> None:
    settings = Settings(
        accounts=[
            {"venue": venue, "name": "t", "api_key": "k", "api_secret": "s", "symbols": symbols}
        ]
    )

    assert settings.accounts[0].symbols == symbols


def test_check_config_names_a_symbol_in_the_wrong_venues_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = TWO_ACCOUNTS.replace('name = "mm-2"', 'name = "mm-2"\nsymbols = ["BTCUSDT"]')

    code = main(["check-config", "--config", str(write(tmp_path, text))])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.splitlines() == [f"accounts[1].symbols[0]: {BINGX_FORM}"]


def test_scope_symbols_stay_venue_agnostic(tmp_path: Path) -> None:
    # A scope may name a symbol in any venue's form: matching is form-insensitive.
    text = TWO_ACCOUNTS + (
        '\n[[heartbeats]]\nsource = "bot-7"\ntimeout_s = 10\n'
        '[heartbeats.scope]\nvenues = ["bingx"]\nsymbols = ["BTCUSDT", "eth-usdt"]\n'
        '\n[[rules]]\nkind = "order_rate"\nvenue = "binance"\naccount = "mm-1"\nlimit = 50\n'
        '[rules.scope]\nsymbols = ["BTC-USDT"]\n'
    )

    settings = load_settings(write(tmp_path, text))

    assert settings.heartbeats[0].scope.to_scope().covers_symbol("ETH-USDT")
    assert settings.rules[0].scope is not None
    assert settings.rules[0].scope.to_scope().covers_symbol("BTCUSDT")


def test_an_account_name_that_cannot_name_a_credential_file_is_rejected(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, BASE.replace('"mm-1"', '"mm 1/x"')))

    assert len(errors) == 1
    assert errors[0].startswith("accounts[0].name: String should match pattern")


def test_the_same_account_twice_is_rejected(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, BASE + BASE.replace("mm-1", "MM-1")))

    assert errors == ["accounts: binance/MM-1 is configured twice"]


def test_a_rule_on_an_unconfigured_account_is_rejected(tmp_path: Path) -> None:
    rule = '\n[[rules]]\nkind = "order_rate"\nvenue = "binance"\naccount = "nope"\nlimit = 50\n'

    assert errors_of(write(tmp_path, BASE + rule)) == [
        "rules[0]: no account binance/nope in accounts"
    ]


TWO_ACCOUNTS = (
    BASE
    + """
[[accounts]]
venue = "bingx"
name = "mm-2"
api_key = "bingx-key-0002"
api_secret = "bingx-secret-0002"
"""
)
CONFIGURED = "(configured: binance/mm-1, bingx/mm-2)"


def test_a_heartbeat_scope_naming_an_unconfigured_account_is_rejected_naming_the_field(
    tmp_path: Path,
) -> None:
    heartbeat = (
        '\n[[heartbeats]]\nsource = "bot-7"\ntimeout_s = 10\n'
        '[heartbeats.scope]\naccounts = ["mm-l"]\n'
    )

    assert errors_of(write(tmp_path, TWO_ACCOUNTS + heartbeat)) == [
        f"heartbeats[0].scope.accounts: no configured account mm-l {CONFIGURED}"
    ]


def test_a_rule_scope_naming_a_venue_without_accounts_is_rejected(tmp_path: Path) -> None:
    rule = (
        '\n[[rules]]\nkind = "order_rate"\nvenue = "binance"\naccount = "mm-1"\nlimit = 50\n'
        '[rules.scope]\nvenues = ["mexc"]\n'
    )

    assert errors_of(write(tmp_path, TWO_ACCOUNTS + rule)) == [
        f"rules[0].scope.venues: no configured account on mexc {CONFIGURED}"
    ]


def test_a_scope_whose_venue_and_account_match_no_one_account_is_rejected(tmp_path: Path) -> None:
    # Both names exist, but mm-1 is not on bingx: the scope selects no account.
    heartbeat = (
        '\n[[heartbeats]]\nsource = "bot-7"\ntimeout_s = 10\n'
        '[heartbeats.scope]\nvenues = ["bingx"]\naccounts = ["mm-1"]\n'
    )

    assert errors_of(write(tmp_path, TWO_ACCOUNTS + heartbeat)) == [
        f"heartbeats[0].scope.venues: no configured account on bingx among accounts ['mm-1'] "
        f"{CONFIGURED}",
        f"heartbeats[0].scope.accounts: no configured account mm-1 on bingx {CONFIGURED}",
    ]


def test_a_scope_with_an_unknown_venue_name_is_rejected_naming_the_field(tmp_path: Path) -> None:
    heartbeat = (
        '\n[[heartbeats]]\nsource = "bot-7"\ntimeout_s = 10\n'
        '[heartbeats.scope]\nvenues = ["binanse"]\n'
    )

    errors = errors_of(write(tmp_path, TWO_ACCOUNTS + heartbeat))

    assert errors == [
        "heartbeats[0].scope.venues: unknown venue(s) ['binanse']; known: "
        "['binance', 'mexc', 'bingx']"
    ]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('client_order_id_prefix = ""', "String should have at least 1 character"),
        ('symbols = ["BTCUSDT", ""]', "names must not be empty"),
        ('accounts = [" "]', "names must not be empty"),
    ],
)
def test_an_empty_name_in_a_scope_is_rejected(tmp_path: Path, line: str, error: str) -> None:
    # An empty prefix would widen the scope to everything; an empty symbol match nothing.
    heartbeat = f'\n[[heartbeats]]\nsource = "bot-7"\ntimeout_s = 10\n[heartbeats.scope]\n{line}\n'
    field = line.split()[0]

    errors = errors_of(write(tmp_path, TWO_ACCOUNTS + heartbeat))

    assert len(errors) == 1
    assert errors[0].startswith(f"heartbeats[0].scope.{field}: ")
    assert error in errors[0]


def test_scopes_that_select_configured_accounts_are_accepted(tmp_path: Path) -> None:
    text = TWO_ACCOUNTS + (
        '\n[[heartbeats]]\nsource = "bot-7"\ntimeout_s = 10\n'
        '[heartbeats.scope]\nvenues = ["binance", "bingx"]\naccounts = ["mm-1", "mm-2"]\n'
        '\n[[rules]]\nkind = "order_rate"\nvenue = "bingx"\naccount = "mm-2"\nlimit = 50\n'
        '[rules.scope]\nsymbols = ["BTC-USDT"]\nclient_order_id_prefix = "b7-"\n'
    )

    settings = load_settings(write(tmp_path, text))

    assert settings.heartbeats[0].scope.accounts == ["mm-1", "mm-2"]


def test_check_config_exits_2_with_one_line_per_scope_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = TWO_ACCOUNTS + (
        '\n[[heartbeats]]\nsource = "bot-7"\ntimeout_s = 10\n'
        '[heartbeats.scope]\naccounts = ["mm-9"]\n'
        '\n[[rules]]\nkind = "order_rate"\nvenue = "bingx"\naccount = "mm-2"\nlimit = 50\n'
        '[rules.scope]\nvenues = ["mexc"]\n'
    )

    code = main(["check-config", "--config", str(write(tmp_path, text))])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"heartbeats[0].scope.accounts: no configured account mm-9 {CONFIGURED}",
        f"rules[0].scope.venues: no configured account on mexc {CONFIGURED}",
    ]


def test_environment_overrides_the_file_with_double_underscore_nesting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = BASE + '\n[kafka]\nbootstrap_servers = "from-file:9092"\n'
    monkeypatch.setenv("KILLSWITCH_KAFKA__BOOTSTRAP_SERVERS", "from-env:9092")
    monkeypatch.setenv("KILLSWITCH_ENGINE__DEADLINE_S", "7.5")

    settings = load_settings(write(tmp_path, text))

    assert settings.kafka.bootstrap_servers == "from-env:9092"
    assert settings.engine.deadline_s == 7.5


def test_an_environment_variable_overrides_one_field_of_one_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = BASE + '\n[[accounts]]\nvenue = "mexc"\nname = "mm-1"\napi_key = "k"\napi_secret = "s"\n'
    monkeypatch.setenv("KILLSWITCH_ACCOUNTS__MEXC__MM-1__TIMEOUT_S", "2.5")

    settings = load_settings(write(tmp_path, text))

    assert settings.account("mexc", "mm-1").timeout_s == 2.5
    assert settings.account("binance", "mm-1").timeout_s == 5.0


def test_the_config_path_comes_from_killswitch_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, BASE.replace("mm-1", "from-env-path"))
    monkeypatch.setenv("KILLSWITCH_CONFIG", str(path))

    assert load_settings().accounts[0].name == "from-env-path"


def test_a_named_config_file_that_does_not_exist_fails(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"

    assert errors_of(missing) == [f"config: no such file {missing}"]


def test_broken_toml_fails_with_a_config_error(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, "[[accounts]\n"))

    assert len(errors) == 1
    assert errors[0].startswith("config: ")


def test_an_unknown_killswitch_variable_fails_start_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILLSWITCH_KAFAK__ENABLED", "false")
    monkeypatch.setenv("KILLSWITCH_ENGINE__DEADLINE", "3")

    errors = errors_of(write(tmp_path, BASE))

    assert errors == [
        "KILLSWITCH_ENGINE__DEADLINE: unknown setting (no such field)",
        "KILLSWITCH_KAFAK__ENABLED: unknown setting (no such field)",
    ]


@pytest.mark.parametrize(
    "var",
    [
        "KILLSWITCH_CONFIG",
        "KILLSWITCH_TEST_KAFKA",
        "KILLSWITCH_STATE_DIR",
        "KILLSWITCH_KAFKA",
        "KILLSWITCH_LOGGING__LEVEL",
        "KILLSWITCH_ACCOUNTS",
        "KILLSWITCH_ACCOUNTS__BINGX__MY-ACCT__API_SECRET",
    ],
)
def test_variables_that_name_a_setting_are_accepted(var: str) -> None:
    assert unknown_env_vars({var: "x"}) == []


@pytest.mark.parametrize(
    "var",
    [
        "KILLSWITCH_ACCOUNTS__KRAKEN__X__API_KEY",
        "KILLSWITCH_ACCOUNTS__BINANCE__X__APIKEY",
        "KILLSWITCH_ACCOUNTS__BINANCE__API_KEY",
        "KILLSWITCH_KAFKA__BOOTSTRAP_SERVERS__X",
        "KILLSWITCH_RULES__0__LIMIT",
    ],
)
def test_variables_that_name_no_setting_are_reported(var: str) -> None:
    assert unknown_env_vars({var: "x"}) == [var]


def make_credentials(tmp_path: Path, files: dict[str, str]) -> Path:
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name, value in files.items():
        (creds / name).write_text(value + "\n")
    return creds


def test_account_keys_and_kafka_password_load_from_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = """
[[accounts]]
venue = "binance"
name = "mm-1"
[[accounts]]
venue = "bingx"
name = "Desk-7"
[kafka]
security_protocol = "SASL_SSL"
sasl_mechanism = "PLAIN"
sasl_username = "ks"
"""
    creds = make_credentials(
        tmp_path,
        {
            "killswitch_accounts__binance__mm-1__api_key": "bk",
            "killswitch_accounts__binance__mm-1__api_secret": "bs",
            "killswitch_accounts__bingx__desk-7__api_key": "xk",
            "killswitch_accounts__bingx__desk-7__api_secret": "xs",
            "killswitch_kafka__sasl_password": "kp",
        },
    )
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))

    settings = load_settings(write(tmp_path, text))

    binance, bingx = settings.accounts
    assert (binance.api_key.get_secret_value(), binance.api_secret.get_secret_value()) == (
        "bk",
        "bs",
    )
    assert (bingx.api_key.get_secret_value(), bingx.api_secret.get_secret_value()) == ("xk", "xs")
    assert bingx.name == "Desk-7"
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "kp"


def test_a_credential_overrides_a_secret_written_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = make_credentials(tmp_path, {"killswitch_accounts__binance__mm-1__api_secret": "new"})
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))

    settings = load_settings(write(tmp_path, BASE))

    assert settings.accounts[0].api_secret.get_secret_value() == "new"
    assert settings.accounts[0].api_key.get_secret_value() == "binance-key-0001"


def test_a_credential_for_an_account_that_is_not_configured_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = make_credentials(tmp_path, {"killswitch_accounts__mexc__ghost__api_key": "k"})
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))

    errors = errors_of(write(tmp_path, BASE))

    assert errors == ["config: accounts__mexc__ghost: no such account in the config"]


def test_a_credentials_directory_that_does_not_exist_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "gone"))

    errors = errors_of(write(tmp_path, BASE))

    assert len(errors) == 1
    assert "does not exist" in errors[0]


def test_sections_are_frozen() -> None:
    kafka = KafkaSettings()

    with pytest.raises(ValidationError):
        kafka.enabled = False


def test_secret_values_lists_every_configured_secret(tmp_path: Path) -> None:
    text = BASE + '\n[kafka]\nalert_hmac_key = "hmac-key-1"\n'

    settings = load_settings(write(tmp_path, text))

    assert sorted(settings.secret_values()) == [
        "binance-key-0001",
        "binance-secret-0001",
        "hmac-key-1",
    ]


def full_config(tmp_path: Path) -> Path:
    text = (
        BASE.replace("binance-secret-0001", SECRET)
        + """
[[accounts]]
venue = "bingx"
name = "desk.7_b"
api_key = "bingx-key"
api_secret = "bingx-secret"
symbols = ["BTC-USDT", "ETH-USDT"]
dead_mans_switch_s = 30

[kafka]
security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "user \\"q\\" \\\\ ✓"
sasl_password = "kafka-password"
ssl_cafile = "/etc/ca.pem"
alert_ttl_ms = 60000

[[heartbeats]]
source = "bot-1"
timeout_s = 15.0
[heartbeats.scope]
venues = ["binance"]
client_order_id_prefix = "bot1-"

[[rules]]
kind = "fill_notional"
venue = "binance"
account = "mm-1"
limit = 250000.0
"""
    )
    return write(tmp_path, text)


def test_check_config_prints_toml_that_reads_back_to_the_same_settings_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = full_config(tmp_path)

    code = main(["check-config", "--config", str(path)])

    out = capsys.readouterr().out
    assert code == 0
    parsed = tomllib.loads(out)
    expected = load_settings(path).model_dump(mode="json", exclude_none=True)
    assert parsed == _drop_none(expected)
    assert parsed["accounts"][0]["api_secret"] == "**********"
    for secret in (SECRET, "binance-key-0001", "bingx-secret", "kafka-password"):
        assert secret not in out


def _drop_none(value: object) -> object:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def test_check_config_exits_2_with_one_line_per_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BASE + '\n[[accounts]]\nvenue = "mexc"\nname = "m"\n\n[engine]\nmax_attempts = 0\n'

    code = main(["check-config", "--config", str(write(tmp_path, text))])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "accounts[1].api_key: required, not set",
        "accounts[1].api_secret: required, not set",
        "engine.max_attempts: Input should be greater than or equal to 1",
    ]


@pytest.mark.parametrize(
    "data",
    [
        {"a": "tab\there", "b": 'quote " and \\ backslash', "c": "del\x7f", "d": "ünïcode ✓"},
        {"n": 1, "f": 0.1, "big": 1e300, "neg": -3, "t": True, "e": [], "l": [1, 2]},
        {"inline": [{"x": 1}, {"x": 2}], "nested": {"deep": {"k": "v"}}, "weird key": 1},
    ],
)
def test_to_toml_round_trips_through_tomllib(data: dict[str, object]) -> None:
    assert tomllib.loads(to_toml(data)) == data


def test_settings_can_be_built_directly_for_tests() -> None:
    settings = Settings(
        accounts=[{"venue": "mexc", "name": "t", "api_key": "k", "api_secret": "s"}]
    )

    assert settings.accounts[0].rest_url == DEFAULT_URLS["mexc"][0]


def test_a_configured_scope_reads_names_as_an_alert_scope_does() -> None:
    """A stray space or capital in a configured scope must not make it match nothing (a kill
    of nothing is flat at once): it is read as an alert's scope is."""
    scope = ScopeSettings.model_validate(
        {"venues": [" Binance"], "symbols": ["BTCUSDT "], "client_order_id_prefix": " bot7-"}
    ).to_scope()
    assert scope.venues == frozenset({"binance"})
    assert scope.covers_symbol("BTCUSDT")
    assert scope.covers_client_id("bot7-1")


@pytest.mark.parametrize(
    ("account", "expected"),
    [
        ('api_key = "k"\napi_secret = "  "', "accounts[1].api_secret: "),
        ('api_key = ""\napi_secret = "s"', "accounts[1].api_key: "),
        (
            f'key_type = "ed25519"\napi_key = "k"\napi_secret = "{SECRET}"',
            "accounts[1]: api_secret: an ed25519 key is a PEM private key or base64 of its 32",
        ),
    ],
)
def test_a_blank_key_or_an_ed25519_secret_that_cannot_be_one_is_refused_without_echo(
    tmp_path: Path, account: str, expected: str
) -> None:
    """Review 39: `check-config` passed an empty secret and a non-key ed25519 secret; the
    daemon would have learned of either only from the venue, at the first kill."""
    text = BASE + f'\n[[accounts]]\nvenue = "binance"\nname = "x"\n{account}\n'

    errors = errors_of(write(tmp_path, text))

    assert len(errors) == 1
    assert errors[0].startswith(expected)
    assert SECRET not in "\n".join(errors)


def test_an_ed25519_secret_in_base64_of_32_bytes_is_accepted(tmp_path: Path) -> None:
    raw = "A" * 43 + "="  # base64 of 32 zero bytes
    account = 'venue = "binance"\nname = "x"\nkey_type = "ed25519"\napi_key = "k"'
    text = BASE + f'\n[[accounts]]\n{account}\napi_secret = "{raw}"\n'
    assert load_settings(write(tmp_path, text)).accounts[1].key_type == "ed25519"
