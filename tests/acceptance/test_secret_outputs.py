"""A failing start never shows the database password: stdout, stderr, logs, /status, /readyz, status files
and the workers' command lines are grepped for it (real supervisor and worker processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ServiceProc, clean_env
from waiting import wait_for

from gxsubmit.pgembed import free_port

PW = "Pw-never-SHOWN-7f3a"


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gxsubmit", *argv], env=env, capture_output=True, text=True, timeout=120,
        start_new_session=True,
    )


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresq://gx:{PW}@127.0.0.1:5432/gx",  # the typo: refused by the configuration
        f"gx:{PW}@127.0.0.1/gx",
        f"postgresql://gx:{PW}@127.0.0.1:notaport/gx",  # accepted by us, refused by libpq
        f"host=127.0.0.1 port=1 password={PW} bogus",
        f"host=127.0.0.1 port=1 password='{PW}",
    ],
)
def test_failing_commands_do_not_print_the_password(dsn: str, wallet: Path) -> None:
    env = clean_env() | {"GXSUBMIT_WALLET": str(wallet), "GXSUBMIT_INSECURE": "true",
                         "GXSUBMIT_CONNECT_TIMEOUT": "1", "GXSUBMIT_DATABASE_URL": dsn}
    refused_by_config = not dsn.startswith("postgresql://") and "=" not in dsn
    commands = [["migrate"], ["status"], ["requeue", "--all-failed"], ["check"]]
    if refused_by_config:  # otherwise the service starts and retries: covered below
        commands += [["supervise"], ["supervise", "--database-url", dsn],
                     ["worker", "--identity", "org1-admin"]]
    for argv in commands:
        out = _run(argv, env)
        assert out.returncode != 0, (argv, out.stdout, out.stderr)
        assert PW not in out.stdout + out.stderr, (argv, out.stdout, out.stderr)


@pytest.mark.parametrize("via_file", [False, True])
def test_a_service_that_cannot_reach_its_database_never_shows_the_password(
    wallet: Path, tmp_path: Path, via_file: bool
) -> None:
    dsn = f"postgresql://gx:{PW}@127.0.0.1:{free_port()}/gx?connect_timeout=1"
    settings = {"GXSUBMIT_WALLET": str(wallet), "GXSUBMIT_GATEWAY": f"127.0.0.1:{free_port()}",
                "GXSUBMIT_CONNECT_TIMEOUT": "1", "GXSUBMIT_HEARTBEAT_INTERVAL": "0.2",
                "GXSUBMIT_LOG_LEVEL": "debug"}
    if via_file:
        f = tmp_path / "dsn"
        f.write_text(dsn)
        f.chmod(0o600)
        settings["GXSUBMIT_DATABASE_URL_FILE"] = str(f)
    else:
        settings["GXSUBMIT_DATABASE_URL"] = dsn
    svc = ServiceProc(name="sec", workdir=tmp_path, settings=settings)
    try:
        svc.start()
        run_dir = tmp_path / "sec-run"

        def workers_reported() -> bool:
            assert svc.proc is not None and svc.proc.poll() is None, svc.tail()
            code, _ = svc.readyz()
            return code == 503 and len([f for f in run_dir.glob("worker-*.json")]) >= 1 and "database" in (
                svc.log_path.read_text(errors="replace").lower()
            )

        wait_for(workers_reported, 90, interval=0.2, what="workers failing on the database")
        seen = [svc.log_path.read_text(errors="replace"), svc.readyz()[1], svc.http("/status")[1].decode(),
                svc.http("/metrics")[1].decode(), svc.http("/readyz?json")[1].decode()]
        seen += [p.read_text(errors="replace") for p in run_dir.glob("*.json")]
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
        workers = 0
        for pid in pids:
            try:
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if svc.proc is not None and ppid == svc.proc.pid:
                workers += 1
                seen.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
                core = [ln for ln in Path(f"/proc/{pid}/limits").read_text().splitlines()
                        if ln.startswith("Max core file size")]
                assert core and core[0].split()[4:6] == ["0", "0"], core  # no core dump of a key holder
                if via_file and os.geteuid() == 0:  # a non-dumpable process's environ is root's to read
                    seen.append(Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace"))
        assert workers >= 1
        assert svc.terminate(30) == 0
        seen.append(svc.log_path.read_text(errors="replace"))
        for text in seen:
            assert PW not in text, text[-3000:]
    finally:
        svc.kill_group()
