"""Operator commands: results on stdout, and one clear stderr line for each failure an operator can fix."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dbutil import new_schema_name
from psycopg import sql

from gxsubmit import admin
from gxsubmit.config import Config, load_config
from gxsubmit.exitcodes import RET_FAIL, RET_OK, RET_UNAVAILABLE, RET_USAGE
from gxsubmit.pgembed import free_port

RunFn = Callable[[Config, argparse.Namespace], int]
AddFn = Callable[[argparse.ArgumentParser], None]


def _cfg(url: str, schema: str) -> Config:
    return dataclasses.replace(load_config(environ={}), database_url=url, schema=schema, connect_timeout=2.0)


def _args(add: AddFn, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(list(argv))


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_enqueue_status_requeue_round_trip(
    pg_url: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _cfg(pg_url, schema)
    argv = ("MINT", "--payload", '{"toUserId": "u1", "amount": 5}', "--request-id", "r1")
    assert admin.run_enqueue(cfg, _args(admin.add_enqueue_arguments, *argv)) == RET_OK
    first = capsys.readouterr().out.split()[0]
    assert admin.run_enqueue(cfg, _args(admin.add_enqueue_arguments, *argv)) == RET_OK
    out = capsys.readouterr().out
    assert out.startswith(first) and "exists" in out

    assert admin.run_status(cfg, _args(admin.add_status_arguments, "--json")) == RET_OK
    data = json.loads(capsys.readouterr().out)
    assert data["by_status"]["PENDING"] == 1 and data["by_type"] == {"MINT": {"PENDING": 1}}

    assert admin.run_status(cfg, _args(admin.add_status_arguments)) == RET_OK
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["TYPE", "PENDING", "CLAIMED", "SUBMITTED", "COMMITTED", "FAILED"]
    assert table.splitlines()[1].split() == ["MINT", "1", "0", "0", "0", "0"]

    assert admin.run_requeue(cfg, _args(admin.add_requeue_arguments, "--id", first)) == RET_OK
    assert "requeued 0" in capsys.readouterr().out  # PENDING rows are not FAILED

    # A row waiting to retry after a failed try is counted under its error.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {}.outbox_commands SET error_code = 'ROTATION_UNRESOLVED'").format(
            sql.Identifier(schema)))
    assert admin.run_status(cfg, _args(admin.add_status_arguments, "--json")) == RET_OK
    assert json.loads(capsys.readouterr().out)["retrying_by_code"] == {"ROTATION_UNRESOLVED": 1}
    assert admin.run_status(cfg, _args(admin.add_status_arguments)) == RET_OK
    assert "  ROTATION_UNRESOLVED: 1" in capsys.readouterr().out.splitlines()


def test_enqueue_with_an_order_key(pg_url: str, schema: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg(pg_url, schema)
    for n, key in ((1, "u-9"), (2, None)):
        argv = ["MINT", "--payload", f'{{"toUserId": "u-9", "amount": {n}}}']
        assert admin.run_enqueue(cfg, _args(admin.add_enqueue_arguments, *argv,
                                            *(["--order-key", key] if key else []))) == RET_OK
    capsys.readouterr()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        query = sql.SQL("SELECT payload->>'amount', order_key FROM {}.outbox_commands ORDER BY seq")
        got = conn.execute(query.format(sql.Identifier(schema))).fetchall()
    assert got == [("1", "u-9"), ("2", None)]
    # A second row of the key waits for the first: status says so.
    argv = ["MINT", "--payload", '{"toUserId": "u-9", "amount": 3}', "--order-key", "u-9"]
    assert admin.run_enqueue(cfg, _args(admin.add_enqueue_arguments, *argv)) == RET_OK
    capsys.readouterr()
    assert admin.run_status(cfg, _args(admin.add_status_arguments, "--json")) == RET_OK
    assert json.loads(capsys.readouterr().out)["waiting_for_order_key"] == {"rows": 1, "keys": 1}
    assert admin.run_status(cfg, _args(admin.add_status_arguments)) == RET_OK
    assert ("waiting behind an earlier command of their order key: 1 PENDING row on 1 key"
            in capsys.readouterr().out.splitlines())


def test_migrate_command(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from dbutil import drop_schema

    name = new_schema_name()
    try:
        cfg = _cfg(pg_url, name)
        assert admin.run_migrate(cfg, _args(admin.add_migrate_arguments)) == RET_OK
        assert "migrated from 0 to version" in capsys.readouterr().out
        assert admin.run_migrate(cfg, _args(admin.add_migrate_arguments)) == RET_OK
        assert "already at version" in capsys.readouterr().out
    finally:
        drop_schema(pg_url, name)


def test_bad_payload_is_a_usage_error(pg_url: str, schema: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(admin.add_enqueue_arguments, "MINT", "--payload", "{not json")
    assert admin.run_enqueue(_cfg(pg_url, schema), args) == RET_USAGE
    assert "--payload is not valid JSON" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("run", "add", "argv"),
    [
        (admin.run_status, admin.add_status_arguments, ()),
        (admin.run_enqueue, admin.add_enqueue_arguments, ("MINT", "--payload", "{}")),
        (admin.run_requeue, admin.add_requeue_arguments, ("--all-failed",)),
        (admin.run_prune, admin.add_prune_arguments, ("--older-than", "30d")),
    ],
)
def test_missing_table_is_one_line(
    pg_url: str, capsys: pytest.CaptureFixture[str], run: RunFn, add: AddFn, argv: tuple[str, ...]
) -> None:
    code = run(_cfg(pg_url, new_schema_name()), _args(add, *argv))
    assert code == RET_FAIL
    assert "run 'gxsubmit migrate'" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("run", "add", "argv"),
    [
        (admin.run_status, admin.add_status_arguments, ()),
        (admin.run_migrate, admin.add_migrate_arguments, ()),
        (admin.run_enqueue, admin.add_enqueue_arguments, ("MINT", "--payload", "{}")),
        (admin.run_requeue, admin.add_requeue_arguments, ("--error-code", "X")),
        (admin.run_prune, admin.add_prune_arguments, ("--older-than", "30d")),
    ],
)
def test_unreachable_database_is_one_line(
    capsys: pytest.CaptureFixture[str], run: RunFn, add: AddFn, argv: tuple[str, ...]
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    code = run(_cfg(url, "public"), _args(add, *argv))
    assert code == RET_UNAVAILABLE
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("gxsubmit ") and "database unavailable" in line


def test_prune_command(
    pg_url: str, schema: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(pg_url, schema)
    for rid, status, days in (("old", "COMMITTED", 40), ("dead", "FAILED", 40), ("new", "COMMITTED", 0)):
        argv = ("MINT", "--payload", "{}", "--request-id", rid)
        assert admin.run_enqueue(cfg, _args(admin.add_enqueue_arguments, *argv)) == RET_OK
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("UPDATE {}.outbox_commands SET status = %s, "
                        "created_at = now() - %s * interval '1 day', "
                        "committed_at = now() - %s * interval '1 day' WHERE request_id = %s")
                .format(sql.Identifier(schema)), [status, days, days, rid])
    capsys.readouterr()
    dry = _args(admin.add_prune_arguments, "--older-than", "30d", "--dry-run")
    assert admin.run_prune(cfg, dry) == RET_OK
    assert capsys.readouterr().out.startswith("would delete 1 COMMITTED row committed before ")
    monkeypatch.setattr(admin, "PRUNE_PROGRESS_EVERY", 1)
    assert admin.run_prune(cfg, _args(admin.add_prune_arguments, "--older-than", "720h")) == RET_OK
    out, err = capsys.readouterr()
    assert out.startswith("deleted 1 COMMITTED row committed before ") and "FAILED and unfinished" in out
    assert err == "gxsubmit prune: 1 rows deleted so far\n"  # progress goes to stderr
    with psycopg.connect(pg_url) as conn:
        left = conn.execute(sql.SQL("SELECT request_id FROM {}.outbox_commands ORDER BY 1")
                            .format(sql.Identifier(schema))).fetchall()
    assert left == [("dead",), ("new",)]


@pytest.mark.parametrize(("age", "says"), [("10m", "shorter than an hour"), ("soon", "not a duration"),
                                          ("30", "not a duration"), ("inf d", "not a duration"),
                                          ("nan h", "not a duration"), ("-3d", "shorter than an hour")])
def test_prune_refuses_a_short_or_bad_age(age: str, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _args(admin.add_prune_arguments, f"--older-than={age}")
    assert exc.value.code == RET_USAGE
    assert says in capsys.readouterr().err


def test_prune_refuses_an_empty_batch(pg_url: str, schema: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(admin.add_prune_arguments, "--older-than", "30d", "--batch", "0")
    assert admin.run_prune(_cfg(pg_url, schema), args) == RET_USAGE
    assert "--batch must be at least 1" in _one_line(capsys.readouterr().err)


def test_record_expiry_fills_in_the_old_certificate_s_expiry(
    pg_url: str, schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows recorded without an expiry (before migration 0004, or by an older release) get it from the
    rotated-out certificate the operator still has; nothing else changes."""
    from cryptography import x509

    from gxsubmit.devwallet import make_dev_wallet
    from gxsubmit.fabric.identity import creator_fingerprint, serialize_identity
    from gxsubmit.wallet import fingerprint_of

    make_dev_wallet(tmp_path / "wallet")
    pem = (tmp_path / "wallet" / "org1-admin-cert").read_bytes()
    fp, other = fingerprint_of(pem), "0" * 64
    expiry = x509.load_pem_x509_certificate(pem).not_valid_after_utc
    cfg = _cfg(pg_url, schema)
    rows = {"pending": ("PENDING", fp, None), "submitted": ("SUBMITTED", fp, None),
            "known": ("PENDING", fp, "2020-01-01T00:00:00Z"), "done": ("COMMITTED", fp, None),
            "other": ("PENDING", other, None),
            # since migration 0008 rows name the serialized creator (MSP id + the file's bytes)
            "creator": ("SUBMITTED", creator_fingerprint(serialize_identity("Org1MSP", pem)), None)}
    for rid, (status, fingerprint, not_after) in rows.items():
        assert admin.run_enqueue(cfg, _args(admin.add_enqueue_arguments, "MINT", "--payload", "{}",
                                            "--request-id", rid)) == RET_OK
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("UPDATE {}.outbox_commands SET status = %s, creator_fingerprint = %s, "
                                 "creator_not_after = %s WHERE request_id = %s")
                         .format(sql.Identifier(schema)), [status, fingerprint, not_after, rid])
    capsys.readouterr()
    cert = str(tmp_path / "wallet" / "org1-admin-cert")
    assert admin.run_record_expiry(cfg, _args(admin.add_record_expiry_arguments, cert)) == RET_OK
    out = capsys.readouterr().out
    assert "recorded on 3 unfinished rows that had none" in out and fp[:16] in out
    with psycopg.connect(pg_url) as conn:
        query = sql.SQL("SELECT request_id, creator_not_after FROM {}.outbox_commands").format(
            sql.Identifier(schema))
        got: dict[str, Any] = dict(conn.execute(query).fetchall())
    assert got["pending"] == got["submitted"] == got["creator"] == expiry
    assert got["known"].year == 2020 and got["done"] is None and got["other"] is None
    assert admin.run_record_expiry(cfg, _args(admin.add_record_expiry_arguments, cert)) == RET_OK
    assert "recorded on 0 unfinished rows" in capsys.readouterr().out  # idempotent


def test_record_expiry_refuses_what_is_not_a_certificate(
    pg_url: str, schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gxsubmit.devwallet import make_dev_wallet

    make_dev_wallet(tmp_path / "wallet")
    key = tmp_path / "wallet" / "org1-admin-key"
    cert = tmp_path / "wallet" / "org1-admin-cert"
    for path, says in ((key, "not a PEM certificate"), (tmp_path / "missing", "file not found")):
        # Nothing is written when any argument is bad, even a good certificate before it.
        args = _args(admin.add_record_expiry_arguments, str(cert), str(path))
        assert admin.run_record_expiry(_cfg(pg_url, schema), args) == RET_USAGE
        err = _one_line(capsys.readouterr().err)
        assert says in err and "PRIVATE KEY" not in err
        body = key.read_text().splitlines()[1]
        assert body not in err  # the key never reaches the message
