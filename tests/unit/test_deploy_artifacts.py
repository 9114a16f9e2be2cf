"""Deployment artefacts: Kubernetes manifests, Containerfile, systemd unit, operations guide.

Everything runs offline and in-process: the overlay rendered by tests/manifests.py, Kubernetes
schemas from PyPI `kubernetes-validate` (strict: unknown fields fail). The checks by external tools
(kustomize, checkov, hadolint, systemd-analyze) are in tests/tools/test_deploy_tools.py.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from gxsubmit import config as gxconfig
from gxsubmit.metrics import exposed_metric_names
from manifests import BASE, CONTAINERFILE, ENV_EXAMPLE, OVERLAY, ROOT, UNIT, render
from manifests import key as _key
from manifests import template as _template

OPERATIONS = ROOT / "docs" / "operations.md"

K8S_VERSION = "1.30.0"
APP = {"app.kubernetes.io/name": "gxsubmit", "app.kubernetes.io/component": "outbox-submitter"}


@pytest.fixture(scope="module", params=["base", "overlay"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(BASE if request.param == "base" else OVERLAY)


@pytest.fixture(scope="module")
def overlay() -> dict[tuple[str, str], dict[str, Any]]:
    return {_key(d): d for d in render(OVERLAY)}


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


# ---- Containerfile --------------------------------------------------------------------------------


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
                  "additive", "maxUnavailable", "\u00d7 (3 workers \u00d7 3 connections + supervisor 1)"):
        assert topic in text, topic
