"""Cluster nodes for deploy/distribute-image, made of real parts on this machine.

Each node is an OpenSSH server on a free 127.0.0.1 port with its own host key, its own authorized client
key and its own containerd (private socket, root and state directories); sshd hands every session the
node's CONTAINERD_ADDRESS and TMPDIR, so `ctr -n k8s.io` and the remote directory are per node. A node
may get a forced command that misbehaves once, the way a real link does (see FAULTS).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from waiting import wait_for

from gxsubmit.pgembed import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

#: Forced commands (authorized_keys command=) that break the first transfer of a node. "cut": 64 KiB
#: arrive, then the node's sshd session is killed (the connection drops, a partial file stays behind
#: under that attempt's name). "corrupt": the whole file arrives with one byte changed (only the
#: checksum on the node can tell). "hang": every transfer stalls (for the per-node timeout).
FAULTS = {
    "cut": """
head -c 65536 | sh -c "$SSH_ORIGINAL_COMMAND"
kill -9 "$PPID"
exit 1""",
    "corrupt": """
{ head -c 4096; printf X; tail -c +4098; } | sh -c "$SSH_ORIGINAL_COMMAND"
exit $?""",
    "hang": """
echo $$ >> "$(dirname "$0")/hang.pids"
exec sleep 300""",
}


@dataclass
class Node:
    name: str
    directory: Path
    port: int
    socket: Path
    tmpdir: Path
    marker: Path  # exists once the fault has fired
    procs: list[subprocess.Popen[bytes]]

    def ctr(self, *args: str) -> str:
        return subprocess.run(["ctr", "--address", str(self.socket), "-n", "k8s.io", *args], check=True,
                              capture_output=True, text=True, timeout=60).stdout


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, timeout=60)
    return path.with_suffix(".pub").read_text().strip()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _containerd(d: Path) -> tuple[subprocess.Popen[bytes], Path]:
    sock = d / "ctd.sock"
    (d / "containerd.toml").write_text(f"""version = 2
root = "{d / 'ctd-root'}"
state = "{d / 'ctd-state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
""")
    with (d / "containerd.log").open("wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(["containerd", "--config", str(d / "containerd.toml")], stdout=log,
                                stderr=log, start_new_session=True)
    wait_for(lambda: proc.poll() is not None or subprocess.run(
        ["ctr", "--address", str(sock), "version"], capture_output=True, timeout=30).returncode == 0,
        timeout=60, interval=0.2, what="containerd up")
    assert proc.poll() is None, (d / "containerd.log").read_text()[-2000:]
    return proc, sock


def _sshd(name: str, d: Path, host_pub: str, client_pub: str, sock: Path, fault: str | None) -> tuple[
        subprocess.Popen[bytes], int, Path]:
    del host_pub
    tmpdir = d / "tmp"
    tmpdir.mkdir()
    marker = d / "fault-fired"
    options = ""
    if fault:
        wrapper = d / "forced-command"
        wrapper.write_text(f"""#!/bin/sh
# {name}: the first transfer misbehaves ({fault}); everything else runs as asked.
case "$SSH_ORIGINAL_COMMAND" in
  *"cat >"*)
    if [ ! -e {shlex.quote(str(marker))} ] || [ {shlex.quote(fault)} = hang ]; then
      : > {shlex.quote(str(marker))}
{FAULTS[fault]}
    fi;;
esac
exec sh -c "$SSH_ORIGINAL_COMMAND"
""")
        wrapper.chmod(0o755)
        options = f'command="{wrapper}" '
    (d / "authorized_keys").write_text(options + client_pub + "\n")
    port = free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
PidFile none
AuthorizedKeysFile {d / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PermitUserEnvironment no
SetEnv CONTAINERD_ADDRESS={sock} CONTAINERD_SNAPSHOTTER=native TMPDIR={tmpdir}
LogLevel ERROR
""")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    with (d / "sshd.log").open("wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log,
                                start_new_session=True)
    wait_for(lambda: proc.poll() is not None or _listening(port), timeout=30, interval=0.1,
             what=f"{name} sshd")
    assert proc.poll() is None, (d / "sshd.log").read_text()[-2000:]
    return proc, port, tmpdir


def _stop(procs: list[subprocess.Popen[bytes]], directory: Path) -> None:
    pids = directory / "hang.pids"  # stalled sessions of a "hang" node outlive their killed client
    for pid in (pids.read_text().split() if pids.exists() else []):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@contextmanager
def cluster(base: Path, faults: dict[str, str | None], down: tuple[str, ...] = ()) -> Iterator[
        tuple[dict[str, Node], Path]]:
    """Nodes named by ``faults`` (name -> fault or None) plus ``down`` names nothing listens for; yields
    (nodes, ssh config file whose Host entries are the node names)."""
    nodes: dict[str, Node] = {}
    config: list[str] = []
    known: list[str] = []
    try:
        for name, fault in faults.items():
            d = base / name
            d.mkdir(parents=True)
            host_pub = _keygen(d / "host_key")
            client_pub = _keygen(d / "client_key")
            ctd, sock = _containerd(d)
            procs = [ctd]
            nodes[name] = Node(name, d, 0, sock, d / "tmp", d / "fault-fired", procs)
            sshd, port, tmpdir = _sshd(name, d, host_pub, client_pub, sock, fault)
            procs.append(sshd)
            nodes[name].port, nodes[name].tmpdir = port, tmpdir
            known.append(f"[127.0.0.1]:{port} {' '.join(host_pub.split()[:2])}")
            config.append(f"Host {name}\n  HostName 127.0.0.1\n  Port {port}\n"
                          f"  IdentityFile {d / 'client_key'}\n")
        for name in down:
            config.append(f"Host {name}\n  HostName 127.0.0.1\n  Port {free_port()}\n"
                          f"  IdentityFile {next(iter(nodes.values())).directory / 'client_key'}\n")
        (base / "known_hosts").write_text("\n".join(known) + "\n")
        common = (f"Host *\n  User {os.environ.get('USER') or 'root'}\n  IdentitiesOnly yes\n"
                  f"  UserKnownHostsFile {base / 'known_hosts'}\n  GlobalKnownHostsFile /dev/null\n"
                  "  StrictHostKeyChecking yes\n  ControlMaster no\n  LogLevel ERROR\n")
        ssh_config = base / "ssh_config"
        ssh_config.write_text("\n".join(config) + "\n" + common)
        yield nodes, ssh_config
    finally:
        for node in nodes.values():
            _stop(node.procs, node.directory)
