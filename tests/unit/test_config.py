"""Config: precedence, the original worker's names, and one-line errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gxsubmit.config import SETTINGS, Config, ConfigError, add_config_arguments, load_config


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_without_environment() -> None:
    cfg = load_config(environ={})
    assert cfg.max_in_flight == 256
    assert cfg.endorsing_orgs == ("Org1MSP", "Org2MSP")
    assert cfg.tls_ca_path == Path("fabric-wallet") / "tlsca-cert"


def test_flag_beats_gxsubmit_env_beats_legacy_env() -> None:
    env = {"GXSUBMIT_DATABASE_URL": "postgresql://a/x", "DATABASE_URL": "postgresql://b/y"}
    assert load_config(environ=env).database_url == "postgresql://a/x"
    assert load_config(environ={"DATABASE_URL": "postgresql://b/y"}).database_url == "postgresql://b/y"
    cfg = load_config(_args("--database-url", "postgresql://c/z"), environ=env)
    assert cfg.database_url == "postgresql://c/z"


def test_original_names_and_units_are_accepted() -> None:
    cfg = load_config(environ={
        "FABRIC_WALLET_PATH": "/fabric-wallet", "BATCH_SIZE": "10", "POLL_INTERVAL": "100",
        "MAX_RETRIES": "5", "LOCK_TIMEOUT": "300000", "METRICS_PORT": "9191", "WORKER_ID": "pod-a",
    })
    assert cfg.wallet == Path("/fabric-wallet")
    assert cfg.batch_size == 10
    assert cfg.poll_interval == pytest.approx(0.1)  # the original counted milliseconds
    assert cfg.max_attempts == 5
    assert cfg.lease_seconds == pytest.approx(300.0)
    assert cfg.metrics_port == 9191
    assert cfg.worker_id == "pod-a"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"GXSUBMIT_MAX_IN_FLIGHT": "lots"}, "GXSUBMIT_MAX_IN_FLIGHT"),
        ({"GXSUBMIT_GATEWAY": "no-port"}, "HOST:PORT"),
        ({"GXSUBMIT_SCHEMA": "Robert'); DROP"}, "GXSUBMIT_SCHEMA"),
        ({"GXSUBMIT_INSECURE": "maybe"}, "true/false"),
        ({"LOCK_TIMEOUT": "soon"}, "LOCK_TIMEOUT"),
        ({"GXSUBMIT_DRAIN_TIMEOUT": "nan"}, "GXSUBMIT_DRAIN_TIMEOUT"),
        ({"GXSUBMIT_BACKOFF_BASE": "10", "GXSUBMIT_BACKOFF_CAP": "5"}, "GXSUBMIT_BACKOFF_CAP"),
        ({"GXSUBMIT_CLIENT_CERT": "/x"}, "GXSUBMIT_CLIENT_KEY"),
    ],
)
def test_bad_values_give_one_line_naming_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ=env)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_require_names_the_missing_setting() -> None:
    with pytest.raises(ConfigError, match="GXSUBMIT_DATABASE_URL or DATABASE_URL"):
        load_config(environ={}).require("database_url")


@given(st.builds(
    Config,
    max_in_flight=st.integers(1, 100000),
    poll_interval=st.floats(0.01, 3600),
    insecure=st.booleans(),
    identities=st.none() | st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True), min_size=1,
                                    max_size=3).map(tuple),
    worker_id=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
))
def test_to_env_round_trips(cfg: Config) -> None:
    """Workers rebuild their config from the supervisor's environment: nothing may drift."""
    assert load_config(environ=cfg.to_env()) == cfg


def test_every_setting_has_a_flag_and_an_env_name() -> None:
    names = {s.name for s in SETTINGS}
    assert names == set(Config.__dataclass_fields__)
    text = subprocess.run([sys.executable, "-m", "gxsubmit", "check", "--help"], capture_output=True,
                          text=True, check=True).stdout
    for s in SETTINGS:
        assert s.flag in text and s.env in text


def test_password_is_masked_in_repr() -> None:
    cfg = load_config(environ={"DATABASE_URL": "postgresql://gx:s3cret@db:5432/gx"})
    assert "s3cret" not in repr(cfg)


def test_cli_bad_setting_is_one_line_exit_78() -> None:
    proc = subprocess.run([sys.executable, "-m", "gxsubmit", "status", "--schema", "Bad Name"],
                          capture_output=True, text=True)
    assert proc.returncode == 78
    assert proc.stderr.count("\n") == 1
    assert "--schema" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tls_paths_follow_the_settings() -> None:
    assert load_config(environ={"GXSUBMIT_INSECURE": "true"}).tls_paths is None
    wallet = load_config(environ={"GXSUBMIT_WALLET": "/w"}).tls_paths
    assert wallet == (Path("/w/tlsca-cert"), Path("/w/client-tls-cert"), Path("/w/client-tls-key"))
    explicit = load_config(environ={"GXSUBMIT_WALLET": "/w", "GXSUBMIT_TLS_CA": "/ca.pem",
                                    "GXSUBMIT_CLIENT_CERT": "/c.pem", "GXSUBMIT_CLIENT_KEY": "/k.pem"})
    assert explicit.tls_paths == (Path("/ca.pem"), Path("/c.pem"), Path("/k.pem"))


def test_the_supervisor_watches_tls_files_without_loading_cryptography(tmp_path: Path) -> None:
    """The supervisor polls the TLS files every few seconds; cryptography would cost it ~10 MB of RSS."""
    code = (
        "import sys\n"
        "from gxsubmit.catalog import load_catalog\n"
        "from gxsubmit.config import load_config\n"
        "from gxsubmit.supervisor import Supervisor\n"
        f"cfg = load_config(environ={{'GXSUBMIT_WALLET': {str(tmp_path)!r}}})\n"
        "sup = Supervisor(cfg, load_catalog(None), ['org1-admin'])\n"
        "sup.reloader.watch_tls()\n"
        "assert sup.reloader.tls_signature is not None\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
