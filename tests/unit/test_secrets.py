"""Secrets stay out of every output: configuration errors, reprs, child command lines, core dumps."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gxsubmit.config import Config, ConfigError, add_config_arguments, load_config
from gxsubmit.secrets import redact

PW = "s3cr3t-Pw-0123"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresq://gx:{PW}@db.example:5432/gx",  # a typo in the scheme
        f"gx:{PW}@db.example:5432/gx",  # no scheme at all
        f"mysql://gx:{PW}@db.example/gx",
        f"  {PW}  ",
    ],
)
def test_a_malformed_database_url_is_not_echoed(dsn: str) -> None:
    for kwargs in ({"environ": {"GXSUBMIT_DATABASE_URL": dsn}}, {"environ": {"DATABASE_URL": dsn}},
                   {"args": _args("--database-url", dsn), "environ": {}},
                   {"environ": {"GXSUBMIT_LISTEN_URL": dsn}}):
        with pytest.raises(ConfigError) as exc:
            load_config(**kwargs)
        text = str(exc.value)
        assert PW not in text, text
        assert "_URL" in text.upper().replace("-", "_") and "\n" not in text


@pytest.mark.parametrize(
    "dsn",
    [f"postgresql://gx:{PW}@db.example:5432/gx", f"host=db.example user=gx password={PW} dbname=gx",
     f"host=db.example password='{PW}' dbname=gx", f"postgresql://db.example/gx?password={PW}&sslmode=require"],
)
def test_config_repr_and_str_hide_the_password(dsn: str) -> None:
    cfg = Config(database_url=dsn, listen_url=dsn)
    assert PW not in repr(cfg)
    assert PW not in str(cfg)
    assert "db.example" in repr(cfg)  # the rest of the URL stays useful


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"connect to postgresql://gx:{PW}@h/db failed", "postgresql://gx:***@h/db"),
        (f"password={PW} host=h", "password=*** host=h"),
        (f"PASSWORD = '{PW} with space' host=h", "host=h"),
        (f"postgres://h/db?sslmode=require&password={PW}", "sslmode=require"),
        (f"PGPASSWORD={PW} psql", "psql"),
        (f"key: -----BEGIN EC PRIVATE KEY-----\n{PW}\n-----END EC PRIVATE KEY-----\n tail", "tail"),
        (f"cut: -----BEGIN PRIVATE KEY-----\n{PW}", "cut:"),
    ],
)
def test_redact(text: str, kept: str) -> None:
    out = redact(text)
    assert PW not in out and "with space" not in out
    assert kept in out


def test_boot_repr_hides_the_client_tls_key() -> None:
    from gxsubmit.workerboot import Boot

    key = b"-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYBYTES\n-----END PRIVATE KEY-----\n"
    b = Boot(catalog=None, types=("T",), role="r", wallet_identity=None,  # type: ignore[arg-type]  # not used by repr
             tls_root=b"ca", client_cert=b"cert", client_key=key)
    assert b"TOPSECRETKEYBYTES".decode() not in repr(b)
    assert "TOPSECRETKEYBYTES" not in str(b)


def test_database_url_from_a_file(tmp_path: Path) -> None:
    dsn = f"postgresql://gx:{PW}@db.example:5432/gx"
    f = tmp_path / "dsn"
    f.write_text(dsn + "\n")
    cfg = load_config(environ={"GXSUBMIT_DATABASE_URL_FILE": str(f)})
    assert cfg.database_url == dsn
    # Children get the file's name, never the URL itself (not even in their environment).
    env = cfg.to_env()
    assert PW not in "".join(env.values())
    assert env["GXSUBMIT_DATABASE_URL_FILE"] == str(f)
    assert load_config(environ=env).database_url == dsn
    assert PW not in repr(cfg)


def test_database_url_file_errors_are_one_line_without_content(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="GXSUBMIT_DATABASE_URL_FILE") as exc:
        load_config(environ={"GXSUBMIT_DATABASE_URL_FILE": str(missing)})
    assert "\n" not in str(exc.value)
    bad = tmp_path / "bad"
    bad.write_text(f"postgresq://gx:{PW}@h/db\n")
    with pytest.raises(ConfigError) as exc:
        load_config(environ={"GXSUBMIT_DATABASE_URL_FILE": str(bad)})
    assert PW not in str(exc.value)
    good = tmp_path / "good"
    good.write_text("postgresql://h/db")
    with pytest.raises(ConfigError, match="not both"):
        load_config(environ={"GXSUBMIT_DATABASE_URL_FILE": str(good), "GXSUBMIT_DATABASE_URL": "postgresql://x/y"})


@pytest.mark.parametrize("name", ["database_url", "listen_url"])
def test_each_url_has_a_file_twin_and_children_get_only_its_name(tmp_path: Path, name: str) -> None:
    dsn = f"postgresql://gx:{PW}@db.example:5432/gx"
    f = tmp_path / "dsn"
    f.write_text(dsn + "\n")
    var = f"GXSUBMIT_{name.upper()}_FILE"
    other = {} if name == "database_url" else {"GXSUBMIT_DATABASE_URL": "postgresql://h/db"}
    cfg = load_config(environ={var: str(f), **other})
    assert getattr(cfg, name) == dsn
    env = cfg.to_env()
    assert PW not in "".join(env.values()) and env[var] == str(f)
    assert getattr(load_config(environ=env), name) == dsn
    with pytest.raises(ConfigError, match="not both"):
        load_config(environ={var: str(f), f"GXSUBMIT_{name.upper()}": "postgresql://x/y", **other})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=f"{var}.*empty"):
        load_config(environ={var: str(tmp_path / "empty"), **other})


def test_worker_command_line_carries_no_database_url() -> None:
    from gxsubmit.supervisor import Supervisor

    sup = Supervisor.__new__(Supervisor)
    argv = Supervisor.worker_argv(sup, "org1-admin")
    assert not any("postgres" in a or "DATABASE" in a.upper() for a in argv)


def test_core_dumps_are_off_after_harden() -> None:
    """In a real child process: RLIMIT_CORE 0 (soft and hard) and not dumpable."""
    code = (
        "import resource, ctypes, ctypes.util\n"
        "from gxsubmit.secrets import no_core_dumps\n"
        "no_core_dumps()\n"
        "print(resource.getrlimit(resource.RLIMIT_CORE))\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)\n"
        "print(libc.prctl(3, 0, 0, 0, 0))\n"  # PR_GET_DUMPABLE
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    lines = out.stdout.split()
    assert out.stdout.splitlines() == ["(0, 0)", "0"], out.stdout + out.stderr + str(lines)


@pytest.mark.parametrize("command", ["check", "cancel", "migrate", "emulator"])
def test_every_command_turns_core_dumps_off_before_it_reads_anything(command: str) -> None:
    """Operator commands read the database URL and (check, cancel) the wallet's keys too: the same
    hardening as the supervisor and the workers, before the arguments are even parsed."""
    code = (
        "import resource, sys\n"
        "from gxsubmit import cli\n"
        f"try:\n    cli.main([{command!r}, '--no-such-flag'])\nexcept SystemExit:\n    pass\n"
        "print(resource.getrlimit(resource.RLIMIT_CORE), file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GXSUBMIT_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.stderr.strip().splitlines()[-1] == "(0, 0)", out.stderr
