"""deploy/distribute-image end to end: the built image sent over real ssh to nodes that are real sshd
instances, each importing into its own containerd with `ctr -n k8s.io` (as plain containerd would; k3s
runs the same importer behind `k3s ctr`). One node cuts its first transfer, one corrupts it, one is down."""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest
from imagetools import PODMAN, ROOT, SESSION, BuiltImage, need_container_runtime, podman
from sshnodes import cluster
from tooling import missing_tool

pytestmark = pytest.mark.timeout(1500)

SCRIPT = ROOT / "deploy" / "distribute-image"
REF = f"registry.example.com/gx/gxsubmit:pytest-{SESSION}"


def _module() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("distribute_image", str(SCRIPT))
    spec = importlib.util.spec_from_loader("distribute_image", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["distribute_image"] = module
    loader.exec_module(module)
    return module


def _need_node_tools() -> None:
    need_container_runtime()
    for tool in ("sshd", "ssh", "ssh-keygen", "containerd", "ctr"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            missing_tool(f"{tool} not installed (Debian: scripts/install-container-tools.sh)")


def _distribute(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _summary_line(stdout: str, node: str) -> str:
    return next(ln for ln in stdout.splitlines() if ln.startswith(node + " "))


def test_distribute_to_nodes_with_a_cut_a_corrupted_and_a_dead_link(
    built_image: BuiltImage, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    _need_node_tools()
    podman("tag", built_image.tag, REF)
    request.addfinalizer(lambda: podman("untag", built_image.tag, REF, check=False))
    out = tmp_path / "out"
    out.mkdir()
    faults: dict[str, str | None] = {"node-a": None, "node-b": "cut", "node-c": "corrupt"}
    with cluster(tmp_path / "nodes", faults, down=("node-down",)) as (nodes, ssh_config):
        proc = _distribute("--image", REF, "--engine", " ".join(PODMAN[:3]), "--out", str(out),
                           "--ssh", f"ssh -F {ssh_config}", "--ctr", "ctr -n k8s.io", "--attempts", "3",
                           "--retry-delay", "0", "--connect-timeout", "5", "--timeout", "300",
                           "node-a", "node-b", "node-c", "node-down")
        print(f"\n--- distribute-image summary (exit {proc.returncode}) ---\n{proc.stdout}"
              f"--- progress (stderr) ---\n{proc.stderr}")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == "distribute-image: failed on 1 of 4 nodes: node-down"

        # The archive and its checksum, in sha256sum's format, beside it.
        archives = list(out.glob("*.oci.tar.gz"))
        assert len(archives) == 1
        archive = archives[0]
        checksum = subprocess.run(["sha256sum", "-c", archive.name + ".sha256"], cwd=out, capture_output=True,
                                  text=True, check=False, timeout=60)
        assert checksum.returncode == 0, checksum.stdout + checksum.stderr
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.extractfile("index.json")
            assert member is not None
            digest = json.load(member)["manifests"][0]["digest"]

        expected_attempts = {"node-a": 1, "node-b": 2, "node-c": 2}
        for name, node in nodes.items():
            line = _summary_line(proc.stdout, name)
            assert re.search(rf"\bok\s+attempts {expected_attempts[name]}\b", line), line
            assert f"digest {digest}" in line
            # Imported into this node's own containerd, under the Deployment's name, with the same digest,
            # and pinned against kubelet's image garbage collection.
            listing = [ln.split() for ln in node.ctr("images", "ls").splitlines()[1:]]
            assert [(row[0], row[2]) for row in listing] == [(REF, digest)], listing
            assert "io.cri-containerd.pinned=pinned" in node.ctr("images", "ls")
            # No archive left on the node: neither the imported one nor a failed attempt's.
            assert list(node.tmpdir.iterdir()) == [], list(node.tmpdir.iterdir())
        assert nodes["node-b"].marker.exists() and nodes["node-c"].marker.exists()
        assert "node-b: attempt 1: transfer failed (ssh exit 255)" in proc.stderr, proc.stderr
        mismatch = "node-c: attempt 1: verify/import failed (exit 65): checksum mismatch on the node"
        assert mismatch in proc.stderr, proc.stderr
        # Each retry went to a fresh remote name.
        sent = re.findall(r"^node-b: attempt \d: sending \S+ as (\S+)$", proc.stderr, re.M)
        assert len(sent) == 2 and len(set(sent)) == 2, sent
        down = _summary_line(proc.stdout, "node-down")
        assert re.search(r"FAILED\s+attempts 3\b", down) and "transfer failed" in down, down


def test_a_stalled_node_fails_at_its_timeout_and_is_named(built_image: BuiltImage, tmp_path: Path) -> None:
    _need_node_tools()
    archive = tmp_path / "small.oci.tar"
    _fake_oci_archive(archive, REF)
    with cluster(tmp_path / "nodes", {"node-hang": "hang"}) as (nodes, ssh_config):
        proc = _distribute("--archive", str(archive), "--out", str(tmp_path), "--ssh", f"ssh -F {ssh_config}",
                           "--ctr", "ctr -n k8s.io", "--attempts", "5", "--retry-delay", "0",
                           "--timeout", "4",
                           "node-hang", timeout=120)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        line = _summary_line(proc.stdout, "node-hang")
        assert re.search(r"FAILED\s+attempts 1\b.*timed out after 4s", line), line
        assert "failed on 1 of 1 nodes: node-hang" in proc.stderr
        assert nodes["node-hang"].ctr("images", "ls").splitlines()[1:] == []


def _fake_oci_archive(path: Path, ref: str) -> None:
    """An OCI layout holding only index.json: enough for everything before the node imports it."""
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": "sha256:" + "0" * 64, "size": 1,
             "annotations": {"org.opencontainers.image.ref.name": ref}}]}
    data = json.dumps(index).encode()
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_dry_run_sends_nothing_and_names_the_plan(tmp_path: Path) -> None:
    archive = tmp_path / "small.oci.tar"
    _fake_oci_archive(archive, REF)
    proc = _distribute("--archive", str(archive), "--out", str(tmp_path), "--dry-run", "--ssh", "false",
                       "node-1", "node-2")
    assert proc.returncode == 0, proc.stderr
    assert [ln.split(":")[0] for ln in proc.stdout.splitlines()] == ["node-1", "node-2"]
    assert "k3s ctr images import" in proc.stdout and "verify digest sha256:" + "0" * 64 in proc.stdout
    # The compressed archive and its checksum are written (that much is local), nothing else happens.
    gz = tmp_path / "small.oci.tar.gz"
    assert gzip.decompress(gz.read_bytes()) == archive.read_bytes()
    assert (tmp_path / "small.oci.tar.gz.sha256").read_text().endswith("  small.oci.tar.gz\n")


def test_bad_archive_and_usage_are_one_line_errors(tmp_path: Path) -> None:
    not_oci = tmp_path / "docker.tar"
    with tarfile.open(not_oci, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        tar.addfile(info, io.BytesIO(b""))
    proc = _distribute("--archive", str(not_oci), "--dry-run", "node-1")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no index.json: not an OCI archive" in proc.stderr
    short = tmp_path / "short.tar"
    _fake_oci_archive(short, "gxsubmit:1")
    proc = _distribute("--archive", str(short), "--dry-run", "node-1")
    assert proc.returncode == 2 and "save the image under its full name" in proc.stderr
    proc = _distribute("--dry-run", "node-1")
    assert proc.returncode == 2 and "give --image or --archive" in proc.stderr


def test_nodes_from_kubectl_json() -> None:
    m = _module()
    doc = {"items": [
        {"metadata": {"name": "srv1"}, "status": {"addresses": [
            {"type": "InternalIP", "address": "10.0.0.1"}, {"type": "ExternalIP", "address": "72.60.210.201"},
            {"type": "Hostname", "address": "srv1"}]}},
        {"metadata": {"name": "srv2"}, "status": {"addresses": [
            {"type": "InternalIP", "address": "10.0.0.2"}, {"type": "Hostname", "address": "srv2"}]}},
    ]}
    assert m.nodes_from_kubectl_json(doc, "InternalIP") == ["10.0.0.1", "10.0.0.2"]
    assert m.nodes_from_kubectl_json(doc, "Hostname") == ["srv1", "srv2"]
    with pytest.raises(m.UsageError, match="node srv2 has no ExternalIP address"):
        m.nodes_from_kubectl_json(doc, "ExternalIP")


def test_remote_script_is_valid_sh_and_removes_every_attempt(tmp_path: Path) -> None:
    """The node-side script, run by sh against a stand-in ctr: a bad checksum stops before the import,
    and every attempt's file is gone afterwards either way."""
    m = _module()
    ctr = tmp_path / "ctr"
    ctr.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/ctr.calls"\n'
                   'case "$1 $2" in "images import") cat > /dev/null;; "images ls") '
                   'echo "REF TYPE DIGEST"; '
                   f'echo "{REF} x sha256:abc";; esac\n')
    ctr.chmod(0o755)
    payload = gzip.compress(b"archive bytes")
    (tmp_path / "n1").write_bytes(b"partial")
    (tmp_path / "n2").write_bytes(payload)
    import hashlib

    good = m.Archive(Path("x"), hashlib.sha256(payload).hexdigest(), REF, "sha256:abc", len(payload))
    script = m.import_script(good, m.remote_path_expr(str(tmp_path), "n2"), str(ctr), True,
                             [m.remote_path_expr(str(tmp_path), "n1")])
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "DIGEST sha256:abc\n", proc.stdout + proc.stderr
    assert not (tmp_path / "n1").exists() and not (tmp_path / "n2").exists()
    calls = (tmp_path / "ctr.calls").read_text().splitlines()
    assert calls == ["images import -", f"images label {REF} io.cri-containerd.pinned=pinned", "images ls"]

    (tmp_path / "ctr.calls").unlink()
    (tmp_path / "n3").write_bytes(payload + b"!")
    script = m.import_script(good, m.remote_path_expr(str(tmp_path), "n3"), str(ctr), True, [])
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 65 and "checksum mismatch" in proc.stderr
    assert not (tmp_path / "ctr.calls").exists() and not (tmp_path / "n3").exists()


def test_nodes_come_from_kubectl_when_none_are_named(tmp_path: Path) -> None:
    """`kubectl get nodes -o json -l SELECTOR` decides the nodes (here a stand-in kubectl that records its
    arguments), with the address type asked for."""
    kubectl = tmp_path / "kubectl"
    nodes = {"items": [
        {"metadata": {"name": f"srv{i}"}, "status": {"addresses": [
            {"type": "InternalIP", "address": f"10.0.0.{i}"},
            {"type": "ExternalIP", "address": f"203.0.113.{i}"}]}}
        for i in (1, 2, 3)]}
    kubectl.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'args'}\n"
                       f"cat <<'EOF'\n{json.dumps(nodes)}\nEOF\n")
    kubectl.chmod(0o755)
    archive = tmp_path / "small.oci.tar"
    _fake_oci_archive(archive, REF)
    proc = _distribute("--archive", str(archive), "--out", str(tmp_path), "--dry-run",
                       "--kubectl", str(kubectl), "-l", "node-role.kubernetes.io/control-plane=true",
                       "--address-type", "ExternalIP")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "args").read_text().split() == [
        "get", "nodes", "-o", "json", "-l", "node-role.kubernetes.io/control-plane=true"]
    planned = [ln.split(":")[0] for ln in proc.stdout.splitlines()]
    assert planned == ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
    failing = tmp_path / "kubectl-down"
    failing.write_text("#!/bin/sh\n"
                       "echo 'The connection to the server localhost:8080 was refused' >&2\nexit 1\n")
    failing.chmod(0o755)
    proc = _distribute("--archive", str(archive), "--out", str(tmp_path), "--dry-run",
                       "--kubectl", str(failing))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "failed: The connection to the server localhost:8080 was refused" in proc.stderr
