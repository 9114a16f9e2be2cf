"""The image itself, run by podman as the manifests run it: non-root 10001, read-only root filesystem, a
tmpfs at /tmp, all capabilities dropped, the wallet mounted read-only; against this host's PostgreSQL and
an emulator (host network). `--version`, `migrate`, `check`, then a real `supervise` that commits
commands, answers /readyz and /metrics, passes its HEALTHCHECK and drains on SIGTERM (exit 0)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from dbutil import drop_schema, new_schema_name
from imagetools import ROOT, BuiltImage, podman
from waiting import wait_for

from gxsubmit import __version__
from gxsubmit.emulator import Emulator
from gxsubmit.metrics import exposed_metric_names
from gxsubmit.pgembed import free_port

pytestmark = pytest.mark.timeout(1500)  # the session's image build happens in the first test's setup

UID = 10001
#: What the container needs from the dev wallet: no CA keys, no emulator server key.
WALLET_FILES = ("ca-cert", "tlsca-cert", "client-tls-cert", "client-tls-key",
                *(f"{n}-{k}" for n in ("org1-super-admin", "org1-admin", "org1-partner-api")
                  for k in ("cert", "key")))
BIO = "ab" * 32
PODMAN_MOUNTS = {"/etc", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/fabric-wallet", "/tmp", "/run",
                 "/run/.containerenv"}


def _run_args(name: str, wallet: Path, env: dict[str, str]) -> list[str]:
    """As the Deployment: uid/gid 10001, read-only root, /tmp a tmpfs, no capabilities, no new privileges."""
    args = ["run", "--name", name, "--network", "host", "--read-only", "--read-only-tmpfs=false",
            "--tmpfs", "/tmp:rw,size=64m,mode=1777", "--user", f"{UID}:{UID}", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--ulimit", "nofile=1024:1024",
            "--ulimit", "nproc=1024:1024",
            "--volume", f"{wallet}:/fabric-wallet:ro"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    return args


@pytest.fixture
def container_wallet(wallet: Path, tmp_path: Path) -> Path:
    """The wallet files as the Secret mount gives them: owned by the pod's user, 0400 (not world-readable)."""
    target = tmp_path / "container-wallet"
    target.mkdir(mode=0o700)
    for name in WALLET_FILES:
        shutil.copyfile(wallet / name, target / name)
        (target / name).chmod(0o400)
        shutil.chown(target / name, UID, UID)
    shutil.chown(target, UID, UID)
    return target


@pytest.fixture
def tls_emulator(wallet: Path, tmp_path: Path) -> Iterator[int]:
    emu = Emulator(wallet=wallet, ledger=tmp_path / "ledger.jsonl", insecure=False, block_time=0.1)
    port = emu.start()
    try:
        yield port
    finally:
        emu.stop()


@pytest.fixture
def fresh_schema(pg_url: str) -> Iterator[str]:
    """A schema name nobody migrated yet: the container's `migrate` creates it."""
    name = new_schema_name()
    try:
        yield name
    finally:
        drop_schema(pg_url, name)


def test_version_labels_and_user(built_image: BuiltImage) -> None:
    out = podman("run", "--rm", "--read-only", "--user", f"{UID}:{UID}", "--ulimit", "nofile=1024:1024",
                 "--ulimit", "nproc=1024:1024", built_image.tag, "--version")
    assert out.stdout.strip() == f"gxsubmit {__version__}"
    config = json.loads(podman("image", "inspect", built_image.tag).stdout)[0]
    labels = config["Labels"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=False).stdout.strip()
    assert labels["org.opencontainers.image.version"] == __version__
    if head:
        assert labels["org.opencontainers.image.revision"] in (head, f"{head}-dirty")
    assert config["Config"]["User"] == f"{UID}:{UID}"
    health = config.get("Healthcheck") or config["Config"].get("Healthcheck")
    assert health and health["Test"][0] == "CMD" and "/healthz" in health["Test"][-1]  # kept: --format docker
    print(f"\nimage {built_image.tag}: {config['Size'] / 1e6:.0f} MB uncompressed; {built_image.build_line}")


def test_migrate_check_and_supervise_in_the_container(
    built_image: BuiltImage, container_wallet: Path, tls_emulator: int, pg_url: str, fresh_schema: str
) -> None:
    metrics_port = free_port()
    env = {
        "GXSUBMIT_DATABASE_URL": pg_url,
        "GXSUBMIT_SCHEMA": fresh_schema,
        "GXSUBMIT_GATEWAY": f"localhost:{tls_emulator}",
        "GXSUBMIT_METRICS_HOST": "127.0.0.1",
        "GXSUBMIT_METRICS_PORT": str(metrics_port),
        "GXSUBMIT_WORKER_ID": "container-test",
        "GXSUBMIT_CONNECT_TIMEOUT": "10",
    }
    suffix = uuid.uuid4().hex[:8]

    migrate = podman(*_run_args(f"gxsubmit-migrate-{suffix}", container_wallet, env), "--rm",
                     "--no-healthcheck", built_image.tag, "migrate", check=False, timeout=120)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    check = podman(*_run_args(f"gxsubmit-check-{suffix}", container_wallet, env), "--rm", "--no-healthcheck",
                   built_image.tag, "check", check=False, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"ok   gateway localhost:{tls_emulator} reachable (TLS)" in check.stdout, check.stdout
    assert not [ln for ln in check.stdout.splitlines() if not ln.startswith("ok   ")], check.stdout

    rows = 50
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for i in range(rows):
            conn.execute(
                f'INSERT INTO "{fresh_schema}".outbox_commands (service, command_type, request_id, payload) '
                "VALUES ('image-test', 'CREATE_USER', %s, %s)",
                (f"img-{i}", json.dumps({"userId": f"img-user-{suffix}-{i}", "biometricHash": BIO,
                                         "nationality": "KE", "age": 30})),
            )

    name = f"gxsubmit-supervise-{suffix}"
    # --health-interval=disable: no systemd timer here to run it periodically; `healthcheck run` runs it.
    podman(*_run_args(name, container_wallet, env), "--detach", "--health-interval=disable", built_image.tag,
           "supervise", timeout=120)
    try:
        def committed() -> bool:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                row = conn.execute(
                    f"SELECT count(*) FROM \"{fresh_schema}\".outbox_commands WHERE status = 'COMMITTED'"
                ).fetchone()
            return row is not None and row[0] == rows

        wait_for(committed, timeout=180, interval=0.5, what=f"{rows} commands committed by the container")

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_for(ready, timeout=60, interval=0.5, what="/readyz 200")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert 'gxsubmit_commands_committed_total{command_type="CREATE_USER",identity="org1-partner-api"}' \
            in metrics, metrics[:2000]
        # What the running image exports is what the alerts and the dashboard are checked against.
        live = {ln.split("{")[0].split(" ")[0] for ln in metrics.splitlines() if ln.startswith("gxsubmit_")}
        assert live and live <= exposed_metric_names(), live - exposed_metric_names()
        health = podman("healthcheck", "run", name, check=False, timeout=60)
        assert health.returncode == 0, health.stdout + health.stderr
        # Nothing written to the image's file system: only podman's own mount points differ (/etc for
        # hosts and resolv.conf, the wallet mount, /tmp, /run), none of them a file the process wrote.
        changed = {line.split(" ", 1)[1] for line in podman("diff", name).stdout.splitlines() if line.strip()}
        assert changed <= PODMAN_MOUNTS, changed - PODMAN_MOUNTS
        assert podman("inspect", "--format", "{{.Config.User}}", name).stdout.strip() == f"{UID}:{UID}"

        podman("stop", "--time", "60", name, timeout=120)  # SIGTERM: the graceful drain
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        logs = podman("logs", name).stderr + podman("logs", name).stdout
        assert state["ExitCode"] == 0, logs[-3000:]
    finally:
        podman("rm", "--force", "--time", "0", name, check=False, timeout=120)
