"""Command catalogue: which identity submits a command type, to which function, with which arguments.

The catalogue is data (``gxsubmit/data/catalog.toml``; its header documents the schema) so that
operators can fix a route or add a type without a release. Everything is validated at load time
(:class:`CatalogError` names the file and the key), and argument building is strict: a bad payload
raises :class:`PayloadError` naming the field instead of sending "undefined" to the chaincode, which
is how the original worker burnt its retries.
"""

from __future__ import annotations

import json
import math
import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "ArgSpec",
    "Catalog",
    "CatalogError",
    "PayloadError",
    "Route",
    "canonical_number",
    "load_catalog",
]

DEFAULT_SOURCE = "gxsubmit/data/catalog.toml"
KINDS = ("string", "number", "scalar", "boolean", "json", "template", "literal")
ITEM_KINDS = ("string", "number", "scalar")
# Values that are almost always a producer's serialised "no value": refusing them here keeps them off
# the ledger (the original sent String(undefined) and failed inside protobuf).
SUSPECT_STRINGS = frozenset({"undefined", "null", "None", "NaN", "nan"})

_IDENTITY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_TYPE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,99}")
_FUNCTION_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*:[A-Za-z_][A-Za-z0-9_]*")
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DECIMAL_RE = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")
_MAX_NUMBER_TEXT = 100


class CatalogError(Exception):
    """A catalogue file is unusable; ``str()`` is ``"<file>: <key>: <reason>"``."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")


class PayloadError(ValueError):
    """The payload cannot produce the chaincode arguments; ``field`` is the payload key at fault."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"payload field '{field}' {reason}" if field != "payload" else f"payload {reason}")


# --------------------------------------------------------------------------------------------------
# argument rendering


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def canonical_number(value: Any, name: str, *, integer: bool = False, minimum: Decimal | None = None) -> str:
    """Render a JSON number (or a plain decimal string) canonically: 100, 100.0, "100.00" -> "100".

    Booleans, NaN, infinities and exponent strings are refused: they are never a valid amount and
    ``str()`` of them ("True", "nan", "1e+300") is not what the chaincode parses.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PayloadError(name, f"must be a number, got {_type_name(value)}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadError(name, "must be a finite number")
        number = Decimal(repr(value))
    elif isinstance(value, int):
        number = Decimal(value)
    else:
        text = value.strip()
        if len(text) > _MAX_NUMBER_TEXT or not _DECIMAL_RE.fullmatch(text):
            raise PayloadError(name, "must be a number or a plain decimal string")
        number = Decimal(text)
    rendered = format(number, "f")
    if "." in rendered:
        rendered = rendered.rstrip("0").rstrip(".")
    if rendered in ("-0", "+0"):
        rendered = "0"
    rendered = rendered.removeprefix("+")
    if integer and "." in rendered:
        raise PayloadError(name, "must be an integer")
    if minimum is not None and number < minimum:
        raise PayloadError(name, f"must be >= {format(minimum, 'f')}")
    return rendered


def _check_suspect(name: str, text: str) -> str:
    if text in SUSPECT_STRINGS:
        raise PayloadError(name, f"has the placeholder value {text!r}")
    return text


@dataclass(frozen=True, slots=True)
class ArgSpec:
    """One chaincode argument, built from the payload (see the TOML header for the meaning)."""

    kind: str = "string"
    fields: tuple[str, ...] = ()
    default: str | None = None
    pattern: re.Pattern[str] | None = None
    integer: bool = False
    minimum: Decimal | None = None
    json_type: str = "any"
    items: tuple[tuple[str, ArgSpec], ...] = ()
    template: tuple[tuple[str, str | None], ...] = ()   # (literal text, field name or None)
    value: str = ""

    @property
    def label(self) -> str:
        """The field an error names: the first candidate key (or the template's first field)."""
        if self.fields:
            return self.fields[0]
        for _, name in self.template:
            if name:
                return name
        return "payload"

    def _pick(self, payload: Mapping[str, Any]) -> tuple[str, Any] | None:
        """The first candidate field that holds a value, or None; a present null/blank is skipped."""
        for name in self.fields:
            if not _is_blank(payload.get(name)):
                return name, payload[name]
        return None

    def _missing(self, payload: Mapping[str, Any]) -> PayloadError:
        name = self.fields[0]
        alternatives = "".join(f" (or '{other}')" for other in self.fields[1:])
        if name not in payload:
            return PayloadError(name, f"is missing{alternatives}")
        if payload[name] is None:
            return PayloadError(name, f"is null{alternatives}")
        return PayloadError(name, f"must not be empty{alternatives}")

    def render(self, payload: Mapping[str, Any]) -> str:
        """The argument string for this payload; raises :class:`PayloadError`."""
        if self.kind == "literal":
            return self.value
        if self.kind == "template":
            return self._render_template(payload)
        picked = self._pick(payload)
        if picked is None:
            if self.default is not None:
                return self.default
            raise self._missing(payload)
        name, value = picked
        if self.kind == "json":
            return self._render_json(name, value)
        return self._render_value(name, value)

    def _render_value(self, name: str, value: Any) -> str:
        kind = self.kind
        if kind == "number":
            return canonical_number(value, name, integer=self.integer, minimum=self.minimum)
        if kind == "boolean":
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower()
            raise PayloadError(name, f"must be a boolean, got {_type_name(value)}")
        if kind == "scalar":
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, int | float):
                return canonical_number(value, name)
            if isinstance(value, str):
                return _check_suspect(name, value)
            raise PayloadError(name, f"must be a string, number or boolean, got {_type_name(value)}")
        # string
        if isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        elif isinstance(value, str):
            text = _check_suspect(name, value)
        else:
            raise PayloadError(name, f"must be a string, got {_type_name(value)}")
        if self.pattern is not None and not self.pattern.fullmatch(text):
            raise PayloadError(name, f"does not match the pattern {self.pattern.pattern!r}")
        return text

    def _render_json(self, name: str, value: Any) -> str:
        if self.json_type == "array" and not isinstance(value, list):
            raise PayloadError(name, f"must be an array, got {_type_name(value)}")
        if self.json_type == "object" and not isinstance(value, dict):
            raise PayloadError(name, f"must be an object, got {_type_name(value)}")
        if isinstance(value, list | dict) and not value:
            raise PayloadError(name, "must not be empty")
        if self.items:
            return self._render_items(name, value)
        try:
            return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (ValueError, TypeError) as exc:
            raise PayloadError(name, f"cannot be encoded as JSON ({exc})") from None

    def _render_items(self, name: str, value: Any) -> str:
        """Map an array of objects to new objects; numbers keep their canonical JSON spelling."""
        if not isinstance(value, list):
            raise PayloadError(name, f"must be an array, got {_type_name(value)}")
        parts: list[str] = []
        for index, element in enumerate(value):
            where = f"{name}[{index}]"
            if not isinstance(element, dict):
                raise PayloadError(where, f"must be an object, got {_type_name(element)}")
            members: list[str] = []
            for out_key, spec in self.items:
                try:
                    text = spec.render(element)
                except PayloadError as exc:
                    raise PayloadError(f"{where}.{exc.field}", exc.reason) from None
                picked = spec._pick(element)
                numeric = picked is not None and isinstance(picked[1], int | float) \
                    and not isinstance(picked[1], bool)
                as_number = spec.kind == "number" or (spec.kind == "scalar" and numeric)
                encoded = text if as_number else json.dumps(text, ensure_ascii=False)
                members.append(f"{json.dumps(out_key, ensure_ascii=False)}:{encoded}")
            parts.append("{" + ",".join(members) + "}")
        return "[" + ",".join(parts) + "]"

    def _render_template(self, payload: Mapping[str, Any]) -> str:
        out: list[str] = []
        for literal, name in self.template:
            out.append(literal)
            if name is None:
                continue
            value = payload.get(name)
            if _is_blank(value):
                raise ArgSpec(fields=(name,))._missing(payload)
            if isinstance(value, int) and not isinstance(value, bool):
                out.append(str(value))
            elif isinstance(value, str):
                out.append(_check_suspect(name, value))
            else:
                raise PayloadError(name, f"must be a string or an integer, got {_type_name(value)}")
        return "".join(out)


@dataclass(frozen=True)
class Route:
    """Where one command type goes; ``function`` is contract-qualified ("Contract:Function")."""

    command_type: str
    identity: str
    role: str
    channel: str
    chaincode: str
    function: str
    args: tuple[ArgSpec, ...] = field(default=(), repr=False)

    @property
    def argc(self) -> int:
        return len(self.args)

    def build_args(self, payload: Any) -> list[str]:
        """Chaincode arguments for ``payload`` (decoded JSON); raises :class:`PayloadError`."""
        if not isinstance(payload, dict):
            raise PayloadError("payload", f"must be a JSON object, got {_type_name(payload)}")
        return [spec.render(payload) for spec in self.args]


@dataclass(frozen=True)
class Catalog:
    """Routes by command type (aliases included) and the identities they use."""

    source: str
    identities: Mapping[str, str]
    routes: Mapping[str, Route]

    def route(self, command_type: str) -> Route | None:
        return self.routes.get(command_type)

    def types_for(self, identity: str) -> list[str]:
        return sorted(t for t, r in self.routes.items() if r.identity == identity)

    def channels_for(self, identity: str) -> list[str]:
        """The channels this identity's commands go to: one commit stream each."""
        return sorted({r.channel for r in self.routes.values() if r.identity == identity})

    def all_types(self) -> list[str]:
        return sorted(self.routes)

    def routed_identities(self) -> list[str]:
        """Identities with at least one route: the workers a supervisor has to run."""
        return sorted({r.identity for r in self.routes.values()})


# --------------------------------------------------------------------------------------------------
# loading and validation


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(source, "", f"not valid TOML: {exc}") from None


def _default_text() -> str:
    return resources.files("gxsubmit").joinpath("data", "catalog.toml").read_text(encoding="utf-8")


def _table(value: Any, source: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CatalogError(source, key, f"must be a table, got {_type_name(value)}")
    return value


def _text(value: Any, source: str, key: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise CatalogError(source, key, f"must be a string, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise CatalogError(source, key, "must not be empty")
    return value


def _unknown_keys(table: Mapping[str, Any], allowed: Sequence[str], source: str, key: str) -> None:
    for name in table:
        if name not in allowed:
            where = f"{key}.{name}" if key else name
            raise CatalogError(source, where, f"unknown key (expected one of: {', '.join(allowed)})")


_ARG_KEYS: dict[str, tuple[str, ...]] = {
    "string": ("kind", "field", "fields", "default", "pattern"),
    "number": ("kind", "field", "fields", "default", "integer", "minimum"),
    "scalar": ("kind", "field", "fields", "default"),
    "boolean": ("kind", "field", "fields", "default"),
    "json": ("kind", "field", "fields", "json_type", "items"),
    "template": ("kind", "template"),
    "literal": ("kind", "value"),
}


def _parse_fields(raw: Mapping[str, Any], source: str, key: str) -> tuple[str, ...]:
    if "field" in raw and "fields" in raw:
        raise CatalogError(source, key, "give either 'field' or 'fields', not both")
    if "field" in raw:
        names: list[Any] = [raw["field"]]
        where = f"{key}.field"
    elif "fields" in raw:
        if not isinstance(raw["fields"], list) or not raw["fields"]:
            raise CatalogError(source, f"{key}.fields", "must be a non-empty array of field names")
        names = list(raw["fields"])
        where = f"{key}.fields"
    else:
        raise CatalogError(source, key, "needs 'field' or 'fields'")
    for name in names:
        if not isinstance(name, str) or not _FIELD_RE.fullmatch(name):
            raise CatalogError(source, where, f"{name!r} is not a valid payload field name")
    return tuple(names)


def _parse_arg(raw: Any, source: str, key: str, *, item: bool = False) -> ArgSpec:
    table = _table(raw, source, key)
    kind = table.get("kind", "string")
    kinds = ITEM_KINDS if item else KINDS
    if kind not in kinds:
        expected = ", ".join(kinds)
        raise CatalogError(source, f"{key}.kind", f"unknown kind {kind!r} (expected one of: {expected})")
    _unknown_keys(table, _ARG_KEYS[kind], source, key)
    if kind == "literal":
        return ArgSpec(kind=kind, value=_text(table.get("value"), source, f"{key}.value", allow_empty=True))
    if kind == "template":
        return ArgSpec(kind=kind, template=_parse_template(table.get("template"), source, f"{key}.template"))
    fields = _parse_fields(table, source, key)
    default = None
    if "default" in table:
        default = _text(table["default"], source, f"{key}.default", allow_empty=True)
    pattern = None
    if "pattern" in table:
        try:
            pattern = re.compile(_text(table["pattern"], source, f"{key}.pattern"))
        except re.error as exc:
            raise CatalogError(source, f"{key}.pattern", f"not a valid regular expression: {exc}") from None
        if default is not None and not pattern.fullmatch(default):
            raise CatalogError(source, f"{key}.default", "does not match the pattern")
    integer = table.get("integer", False)
    if not isinstance(integer, bool):
        raise CatalogError(source, f"{key}.integer", "must be true or false")
    minimum = None
    if "minimum" in table:
        low = table["minimum"]
        if isinstance(low, bool) or not isinstance(low, int | float) or not math.isfinite(low):
            raise CatalogError(source, f"{key}.minimum", "must be a finite number")
        minimum = Decimal(repr(low)) if isinstance(low, float) else Decimal(low)
    if kind == "number" and default is not None:
        try:
            canonical_number(default, "default", integer=integer, minimum=minimum)
        except PayloadError as exc:
            raise CatalogError(source, f"{key}.default", exc.reason) from None
    json_type = table.get("json_type", "any")
    if json_type not in ("array", "object", "any"):
        raise CatalogError(source, f"{key}.json_type", "must be 'array', 'object' or 'any'")
    items: tuple[tuple[str, ArgSpec], ...] = ()
    if "items" in table:
        if json_type != "array":
            raise CatalogError(source, f"{key}.items", "needs json_type = \"array\"")
        members = _table(table["items"], source, f"{key}.items")
        if not members:
            raise CatalogError(source, f"{key}.items", "must map at least one key")
        items = tuple(
            (name, _parse_arg(spec, source, f"{key}.items.{name}", item=True))
            for name, spec in members.items()
        )
    return ArgSpec(kind=kind, fields=fields, default=default, pattern=pattern, integer=integer,
                   minimum=minimum, json_type=json_type, items=items)


def _parse_template(raw: Any, source: str, key: str) -> tuple[tuple[str, str | None], ...]:
    text = _text(raw, source, key)
    parts: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise CatalogError(source, key, f"bad template: {exc}") from None
    for literal, name, spec, conversion in parsed:
        if name is not None and (not _FIELD_RE.fullmatch(name) or spec or conversion):
            raise CatalogError(source, key, f"placeholder {{{name}}} must be a plain payload field name")
        parts.append((literal, name))
    if not any(name for _, name in parts):
        raise CatalogError(source, key, "has no {field} placeholder: use kind = \"literal\"")
    return tuple(parts)


def _merge(base: dict[str, Any], overlay: dict[str, Any], source: str) -> dict[str, Any]:
    """Apply an ``extends = "default"`` file on top of the packaged catalogue."""
    merged: dict[str, Any] = {
        "defaults": dict(_table(base.get("defaults", {}), source, "defaults")),
        "identities": dict(_table(base.get("identities", {}), source, "identities")),
        "types": dict(_table(base.get("types", {}), source, "types")),
    }
    remove = overlay.get("remove", [])
    if not isinstance(remove, list):
        raise CatalogError(source, "remove", "must be an array of command types")
    for name in remove:
        if not isinstance(name, str) or name not in merged["types"]:
            raise CatalogError(source, "remove", f"{name!r} is not a type of the default catalogue")
        del merged["types"][name]
    for section in ("defaults", "identities", "types"):
        merged[section].update(_table(overlay.get(section, {}), source, section))
    return merged


def _build(raw: dict[str, Any], source: str) -> Catalog:
    defaults = _table(raw.get("defaults", {}), source, "defaults")
    _unknown_keys(defaults, ("channel", "chaincode"), source, "defaults")
    identities_raw = _table(raw.get("identities"), source, "identities") if "identities" in raw else {}
    if not identities_raw:
        raise CatalogError(source, "identities", "declare at least one identity and its role")
    identities: dict[str, str] = {}
    for name, role in identities_raw.items():
        if not _IDENTITY_RE.fullmatch(name):
            raise CatalogError(source, f"identities.{name}",
                               "identity names use letters, digits, '.', '_', '-'")
        identities[name] = _text(role, source, f"identities.{name}")
    types_raw = _table(raw.get("types"), source, "types") if "types" in raw else {}
    if not types_raw:
        raise CatalogError(source, "types", "declare at least one command type")
    routes: dict[str, Route] = {}
    for type_name, body in types_raw.items():
        key = f"types.{type_name}"
        if not _TYPE_RE.fullmatch(type_name):
            raise CatalogError(source, key, "command type names use letters, digits, '_', '.', ':', '-'")
        table = _table(body, source, key)
        _unknown_keys(table, ("identity", "role", "function", "channel", "chaincode", "aliases", "args"),
                      source, key)
        if "identity" not in table:
            raise CatalogError(source, f"{key}.identity", "missing")
        identity = _text(table["identity"], source, f"{key}.identity")
        if identity not in identities:
            raise CatalogError(source, f"{key}.identity", f"{identity!r} is not declared in [identities]")
        role = identities[identity]
        if "role" in table:
            required = _text(table["role"], source, f"{key}.role")
            if required != role:
                raise CatalogError(source, f"{key}.role",
                                   f"the chaincode requires {required!r} but {identity!r} has {role!r}")
        if "function" not in table:
            raise CatalogError(source, f"{key}.function", "missing")
        function = _text(table["function"], source, f"{key}.function")
        if not _FUNCTION_RE.fullmatch(function):
            raise CatalogError(source, f"{key}.function", "must be contract-qualified: \"Contract:Function\"")
        target: dict[str, str] = {}
        for setting in ("channel", "chaincode"):
            value = table.get(setting, defaults.get(setting))
            if value is None:
                raise CatalogError(source, f"{key}.{setting}", f"not set here nor in [defaults] {setting}")
            target[setting] = _text(value, source, f"{key}.{setting}")
        args_raw = table.get("args", [])
        if not isinstance(args_raw, list):
            raise CatalogError(source, f"{key}.args", "must be an array of inline tables")
        args = tuple(_parse_arg(a, source, f"{key}.args[{i}]") for i, a in enumerate(args_raw))
        aliases = table.get("aliases", [])
        if not isinstance(aliases, list):
            raise CatalogError(source, f"{key}.aliases", "must be an array of command types")
        for index, name in enumerate([type_name, *aliases]):
            where = f"{key}.aliases" if index else key
            if not isinstance(name, str) or not _TYPE_RE.fullmatch(name):
                raise CatalogError(source, where, f"{name!r} is not a valid command type")
            if name in routes:
                raise CatalogError(source, where, f"{name!r} is routed twice")
            routes[name] = Route(command_type=name, identity=identity, role=role, channel=target["channel"],
                                 chaincode=target["chaincode"], function=function, args=args)
    return Catalog(source=source, identities=MappingProxyType(identities), routes=MappingProxyType(routes))


def load_catalog(path: Path | None = None) -> Catalog:
    """Load ``path`` (None = the packaged GX default); raises :class:`CatalogError`."""
    if path is None:
        raw = _read_toml(_default_text(), DEFAULT_SOURCE)
        _unknown_keys(raw, ("defaults", "identities", "types"), DEFAULT_SOURCE, "")
        return _build(raw, DEFAULT_SOURCE)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise CatalogError(source, "", f"cannot read: {reason}") from None
    raw = _read_toml(text, source)
    _unknown_keys(raw, ("extends", "remove", "defaults", "identities", "types"), source, "")
    if "extends" in raw:
        if raw["extends"] != "default":
            raise CatalogError(source, "extends", "only \"default\" (the packaged catalogue) can be extended")
        raw = _merge(_read_toml(_default_text(), DEFAULT_SOURCE), raw, source)
    elif "remove" in raw:
        raise CatalogError(source, "remove", "needs extends = \"default\"")
    return _build(raw, source)
