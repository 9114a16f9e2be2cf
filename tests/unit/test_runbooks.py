"""Alerts lead somewhere: every alert's runbook_url names a section of docs/operations.md that exists and
says what to look at and what to do; metric selectors quoted in the guide use label values the code emits."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
RULES = ROOT / "manifests" / "base" / "prometheusrule.yaml"


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading: lower case, punctuation dropped,
    spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def sections(text: str) -> dict[str, str]:
    """anchor -> the section's body (up to the next heading of the same or a higher level)."""
    found: dict[str, str] = {}
    lines = text.splitlines()
    heads = [(i, len(m.group(1)), m.group(2)) for i, line in enumerate(lines)
             if (m := re.match(r"^(#{1,6})\s+(.*)$", line))]
    in_code = set()
    fence = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fence = not fence
        if fence:
            in_code.add(i)
    heads = [h for h in heads if h[0] not in in_code]
    for n, (i, level, title) in enumerate(heads):
        end = next((j for j, lv, _ in heads[n + 1:] if lv <= level), len(lines))
        found[github_anchor(title)] = "\n".join(lines[i + 1:end])
    return found


def _alerts() -> list[dict[str, object]]:
    rule = yaml.safe_load(RULES.read_text())
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def test_anchor_rules() -> None:
    assert github_anchor("Rotate wallet credentials") == "rotate-wallet-credentials"
    assert github_anchor("GxsubmitDown: no replica is scraped") == "gxsubmitdown-no-replica-is-scraped"
    assert github_anchor("Cut over from the TypeScript worker (`outbox-submitter`)") == \
        "cut-over-from-the-typescript-worker-outbox-submitter"


def test_every_alert_has_a_runbook_section_that_says_what_to_look_at_and_do() -> None:
    docs = sections(OPERATIONS.read_text())
    seen: set[str] = set()
    for alert in _alerts():
        annotations = alert["annotations"]
        assert isinstance(annotations, dict), alert
        url = annotations.get("runbook_url", "")
        assert isinstance(url, str) and "/docs/operations.md#" in url, f"{alert['alert']}: {url!r}"
        anchor = url.rsplit("#", 1)[1]
        assert anchor in docs, f"{alert['alert']}: no section #{anchor} in docs/operations.md"
        body = docs[anchor]
        assert str(alert["alert"]) in body or str(alert["alert"]).lower() in anchor, anchor
        assert "**Look at**" in body and "**Do**" in body, f"#{anchor}: say what to look at and what to do"
        seen.add(anchor)
    assert len(seen) >= 9


def test_the_guide_quotes_only_label_values_the_code_emits() -> None:
    """`gxsubmit_wallet_reloads_total{result="..."}` in the guide must be a result the worker counts."""
    emitted = set()
    for source in (ROOT / "gxsubmit").rglob("*.py"):
        emitted |= set(re.findall(r"wallet_reload\(\"(\w+)\"\)", source.read_text()))
    assert emitted == {"loaded", "rejected"}
    quoted = re.findall(r'gxsubmit_wallet_reloads_total\{result="(\w+)"\}', OPERATIONS.read_text())
    assert quoted, "the rotation section should say which counter to wait for"
    never = set(quoted) - emitted
    assert not never, f"docs/operations.md waits for result={never}, which the code never counts"


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def test_kubernetes_objects_in_the_guide_validate() -> None:
    """Objects the guide applies inline (heredocs in sh blocks, yaml blocks) pass the schema, strict."""
    import kubernetes_validate

    text = OPERATIONS.read_text()
    docs = []
    for block in _code_blocks(text, "sh"):
        docs += re.findall(r"<<'EOF'\n(.*?)^EOF$", block, re.M | re.S)
    docs += _code_blocks(text, "yaml")
    objects = [d for d in (yaml.safe_load(doc) for doc in docs) if isinstance(d, dict) and "kind" in d]
    assert {o["kind"] for o in objects} >= {"Job"}
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30.0", strict=True)


def test_wallet_export_in_the_cutover_runs(tmp_path: Path) -> None:
    """The cutover's ConfigMap export, run as written on a ConfigMap as `kubectl get -o json` returns it:
    every key to wallet-all/, all but org2's to wallet/, files readable by the owner only."""
    import json
    import os
    import subprocess
    import sys

    section = sections(OPERATIONS.read_text())["cut-over-from-the-typescript-worker"]
    script = re.search(r"python3 -c '(import json, os, sys\n.*?)' fabric-wallet\.json", section, re.S)
    assert script, "the export command is gone from the cutover section"
    keys = ["ca-cert", "tlsca-cert", "org1-admin-cert", "org1-admin-key", "org2-super-admin-cert",
            "org2-super-admin-key"]
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fabric-wallet"},
                 "data": {k: f"-----BEGIN {k}-----\n" for k in keys}}
    (tmp_path / "fabric-wallet.json").write_text(json.dumps(configmap))
    proc = subprocess.run(f"umask 077 && {sys.executable} -c \"$SCRIPT\" fabric-wallet.json", shell=True,
                          cwd=tmp_path, env={**os.environ, "SCRIPT": script.group(1)}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "wallet-all").iterdir()) == sorted(keys)
    without_org2 = sorted(k for k in keys if "org2" not in k)
    assert sorted(p.name for p in (tmp_path / "wallet").iterdir()) == without_org2
    for f in (tmp_path / "wallet").iterdir():
        assert f.read_text() == f"-----BEGIN {f.name}-----\n" and (f.stat().st_mode & 0o077) == 0


def test_every_link_inside_the_guide_leads_to_a_section() -> None:
    """`](#anchor)` links of docs/operations.md (contents, runbooks, cutover) name headings that exist."""
    text = OPERATIONS.read_text()
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    missing = links - set(sections(text))
    assert links and not missing, f"links to missing sections: {sorted(missing)}"
