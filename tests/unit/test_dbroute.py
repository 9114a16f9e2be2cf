"""Pure logic of gxsubmit.dbroute: the CA file in the conninfo, and TLS failures told from outages."""

from __future__ import annotations

from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from gxsubmit.config import Config, conninfo
from gxsubmit.dbroute import CONNECT_ARGS, tls_problem


def test_every_connection_turns_off_server_side_prepared_statements() -> None:
    assert CONNECT_ARGS["prepare_threshold"] is None


def test_a_ca_file_means_verify_full_unless_the_url_says_otherwise() -> None:
    info = conninfo_to_dict(conninfo("postgresql://u@db:5432/x", Path("/etc/ca.crt")))
    assert info["sslrootcert"] == "/etc/ca.crt" and info["sslmode"] == "verify-full"
    info = conninfo_to_dict(conninfo("postgresql://u@db/x?sslmode=verify-ca", Path("/etc/ca.crt")))
    assert info["sslmode"] == "verify-ca"
    assert conninfo("postgresql://u@db/x", None) == "postgresql://u@db/x"


def test_config_applies_the_ca_to_both_urls() -> None:
    cfg = Config(database_url="postgresql://u@pooler/x", listen_url="postgresql://u@primary/x",
                 database_ca=Path("/ca.crt"))
    assert conninfo_to_dict(cfg.database_conninfo)["host"] == "pooler"
    listen = conninfo_to_dict(cfg.listen_conninfo)
    assert listen["host"] == "primary" and listen["sslrootcert"] == "/ca.crt"
    pooled_only = Config(database_url="postgresql://u@pooler/x")
    assert conninfo_to_dict(pooled_only.listen_conninfo)["host"] == "pooler"


def test_repr_masks_the_listen_url_password() -> None:
    shown = repr(Config(listen_url="postgresql://u:secret@primary/x"))
    assert "secret" not in shown and "primary" in shown


def test_tls_failures_name_the_setting_and_outages_are_not_tls_failures() -> None:
    kw = {"url_setting": "GXSUBMIT_DATABASE_URL", "ca_setting": "GXSUBMIT_DATABASE_CA"}
    wrong_ca = Exception('connection to server at "10.0.0.1", port 5432 failed: SSL error: certificate '
                         "verify failed")
    assert "GXSUBMIT_DATABASE_CA" in str(tls_problem(wrong_ca, **kw))
    wrong_host = Exception('server certificate for "db" does not match host name "db2"')
    assert "GXSUBMIT_DATABASE_URL" in str(tls_problem(wrong_host, **kw))
    down = Exception('connection to server at "10.0.0.1", port 5432 failed: Connection refused')
    assert tls_problem(down, **kw) is None
