"""The systemd unit: `systemd-analyze verify` and `security --offline=true` on the real file, and
its settings agree with the daemon's (timeouts, directories, credentials, example config)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from killswitch.config import load_settings
from killswitch.handlers.control import SOCKET_MODE
from killswitch.settings import ControlSettings, EngineSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "killswitch.service"
SYSUSERS = ROOT / "systemd" / "killswitch.sysusers"
EXAMPLE = ROOT / "systemd" / "killswitch.example.toml"
MAX_EXPOSURE = 2.0


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: `make system-deps` installs Debian's systemd")
    return path


def unit_settings(text: str) -> dict[str, list[str]]:
    """Parse a unit file into key -> values (keys may repeat)."""
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def render(tmp_path: Path, exec_start: str) -> Path:
    """Copy the unit with ExecStart pointing at `exec_start` (keeping its arguments)."""
    text = re.sub(
        r"^ExecStart=\S+", f"ExecStart={exec_start}", UNIT.read_text(), flags=re.MULTILINE
    )
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    path = unit_dir / "killswitch.service"
    path.write_text(text)
    return path


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def installed_console_script() -> Path:
    script = Path(sys.executable).parent / "killswitch"
    assert script.exists(), f"the console script is not installed at {script}"
    return script


def test_the_unit_passes_verify_pointing_at_the_installed_console_script(tmp_path: Path) -> None:
    unit = render(tmp_path, str(installed_console_script()))

    result = verify(unit)

    assert result.returncode == 0, result.stderr
    assert "killswitch.service" not in result.stdout + result.stderr


def test_verify_catches_an_exec_start_that_does_not_exist(tmp_path: Path) -> None:
    unit = render(tmp_path, str(tmp_path / "no-such-killswitch"))

    result = verify(unit)

    assert result.returncode != 0
    assert "no-such-killswitch" in result.stderr


def test_the_hardening_exposure_is_at_most_2_0() -> None:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", str(UNIT.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    match = re.search(r"Overall exposure level for killswitch\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure} (limit {MAX_EXPOSURE})")
    assert exposure <= MAX_EXPOSURE


def test_the_unit_runs_the_daemon_as_a_notify_service_with_a_watchdog() -> None:
    unit = unit_settings(UNIT.read_text())

    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["Restart"] == ["always"]
    assert unit["WatchdogSec"] == ["30s"]
    assert unit["ExecStart"][0].split()[1] == "run"
    assert unit["User"] == ["killswitch"]


def test_the_stop_timeout_leaves_room_for_the_grace_period() -> None:
    unit = unit_settings(UNIT.read_text())

    [stop] = unit["TimeoutStopSec"]
    assert stop.endswith("s")
    assert float(stop.removesuffix("s")) > EngineSettings().grace_period_s


def test_the_units_directories_match_the_default_paths() -> None:
    unit = unit_settings(UNIT.read_text())
    state_default = Settings.model_fields["state_dir"].default

    assert unit["StateDirectory"] == ["killswitch"]
    assert state_default == Path("/var/lib/killswitch")
    assert unit["RuntimeDirectory"] == ["killswitch"]
    assert ControlSettings().socket_path.parent == Path("/run/killswitch")


def test_members_of_the_service_group_can_reach_the_control_socket_and_others_cannot() -> None:
    unit = unit_settings(UNIT.read_text())
    # sysusers `u killswitch` creates the user and a group of the same name.
    users = [line.split() for line in SYSUSERS.read_text().splitlines() if line.startswith("u ")]
    assert [u[1] for u in users] == ["killswitch"]
    assert unit["Group"] == ["killswitch"]
    # The runtime directory lets the group in (search) and nobody else; the socket in it is
    # created with the daemon's group, read-write for owner and group only.
    [runtime_mode] = unit["RuntimeDirectoryMode"]
    mode = int(runtime_mode, 8)
    assert mode & 0o010
    assert not mode & 0o007
    assert SOCKET_MODE == 0o660


def test_the_example_config_is_valid_with_keys_from_credential_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [credential] = unit_settings(UNIT.read_text())["LoadCredential"]
    prefix, _, source_dir = credential.partition(":")
    assert source_dir == "/etc/killswitch/credentials"
    # systemd names each file of a credential directory "<id>_<file name>".
    creds = tmp_path / "credentials"
    creds.mkdir()
    documented = re.findall(r"/etc/killswitch/credentials/(accounts__\S+)", EXAMPLE.read_text())
    assert documented
    for name in ("binance__mm-1", "mexc__mm-1", "bingx__mm-1"):
        for field in ("api_key", "api_secret"):
            (creds / f"{prefix}_accounts__{name}__{field}").write_text(f"{name}-{field}\n")
    # The example's Binance key is ed25519: its secret must have a key's form (base64 of 32
    # raw bytes here; a PEM file in production).
    (creds / f"{prefix}_accounts__binance__mm-1__api_secret").write_text("A" * 43 + "=\n")
    for var in ("KILLSWITCH_CONFIG", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))

    settings = load_settings(EXAMPLE)

    assert [a.label for a in settings.accounts] == ["binance/mm-1", "mexc/mm-1", "bingx/mm-1"]
    assert settings.account("bingx", "mm-1").api_secret.get_secret_value() == (
        "bingx__mm-1-api_secret"
    )
    assert all(f"{prefix}_{name}" in {p.name for p in creds.iterdir()} for name in documented)
