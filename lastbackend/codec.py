"""The one converter: JSON <-> model, for request bodies and etcd values alike.

It is strict where cattrs is lenient by default: a string is not an int, ``true`` is not ``1``,
``1`` is not ``"1"``, and unknown fields are refused. Every failure becomes a list of
:class:`FieldError` naming the field path and the reason, which the API returns as a 422.
Timestamps are RFC 3339 in UTC (``2017-03-01T14:13:08Z``) rather than seed 001's JavaScript
date strings: sortable, unambiguous and parseable everywhere.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from lastbackend.model import apps, common, health, hosts, platform, registries, repos
from lastbackend.model import images as image_model
from lastbackend.model import vendors as vendor_model

T = TypeVar("T")

CHECKS = {
    **common.CHECKS,
    **hosts.CHECKS,
    **platform.CHECKS,
    **health.CHECKS,
    **registries.CHECKS,
    **apps.CHECKS,
    **repos.CHECKS,
    **vendor_model.CHECKS,
    **image_model.CHECKS,
}
"""Every validated type of every family, with its JSON type and checker."""
_ZERO = timedelta(0)


@attrs.frozen
class FieldError:
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class Invalid(ValueError):
    """Input that does not decode into the model; carries every problem found."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(map(str, errors)))
        self.errors = errors


def format_time(value: datetime) -> str:
    v = value if value.utcoffset() == _ZERO else value.astimezone(UTC)
    # f-string, not strftime: this runs twice per object in every response.
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}Z"


def format_instant(value: datetime) -> str:
    """To the millisecond: for the times health checks and rollouts measure by (``Instant``)."""
    v = value if value.utcoffset() == _ZERO else value.astimezone(UTC)
    return f"{format_time(v)[:-1]}.{v.microsecond // 1000:03d}Z"


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return parsed.astimezone(UTC)


_JSON_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _strict(kind: type) -> Callable[[Any, Any], Any]:
    name = _JSON_NAMES[kind]

    def hook(value: Any, _: Any) -> Any:
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            return int(value)  # JSON has one number type: 3.0 is the integer 3 (JSON Schema too)
        if not ok:
            raise ValueError(f"must be {name}, got {_json_type(value)}")
        if kind is str:
            try:
                value.encode()
            except UnicodeEncodeError:
                raise ValueError("must be valid Unicode text: it holds a lone surrogate") from None
        return value

    return hook


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _checked(kind: type, check: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    base = _strict(kind)
    return lambda value, _: check(base(value, None))


def _domains_hook(converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """Each entry checked as ``RouteHost -> bool`` (errors name ``domains['<host>']``), then the
    rules across entries (``model.hosts.check_domains``)."""
    entries = dict[hosts.RouteHost, bool]

    def hook(value: Any, _: Any) -> Any:
        converter.structure(value, entries)
        return hosts.check_domains(value)

    return hook


def _dict_hook(converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """Dicts must arrive as JSON objects; cattrs would otherwise take any mapping-like value."""

    def hook(value: Any, cl: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"must be an object, got {_json_type(value)}")
        key_type, value_type = getattr(cl, "__args__", (Any, Any))
        out: dict[Any, Any] = {}
        errors: list[Exception] = []
        for k, v in value.items():
            try:
                out[converter.structure(k, key_type)] = converter.structure(v, value_type)
            except Exception as exc:
                exc.__notes__ = [*getattr(exc, "__notes__", []), f"[{k!r}]"]
                errors.append(exc)
        if errors:
            raise cattrs.IterableValidationError("invalid entries", errors, cl)
        return out

    return hook


def _object_hook(converter: cattrs.Converter, cl: Any) -> Callable[[Any, Any], Any]:
    """Nested model objects must arrive as JSON objects too (the top level is checked in
    :func:`structure`); cattrs would otherwise fail with "'list' object has no attribute 'keys'"."""
    inner = make_dict_structure_fn(cl, converter, _cattrs_forbid_extra_keys=True)

    def hook(value: Any, _: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"must be an object, got {_json_type(value)}")
        return inner(value, cl)

    return hook


RELATIONSHIPS = (apps.SpaceRef, apps.AppRef)
"""To-one relationships, taken in both spellings (see :func:`_relationship_hook`)."""


def _relationship_hook(converter: cattrs.Converter, cl: Any) -> Callable[[Any, Any], Any]:
    """A to-one relationship as seed 000 writes it (``{"guid"}``) or as Cloud Foundry ships it
    (``{"data": {"guid"}}``): both decode to the same reference."""
    inner = _object_hook(converter, cl)

    def hook(value: Any, _: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"data"} and isinstance(value["data"], dict):
            value = value["data"]
        return inner(value, cl)

    return hook


def _literal_hook(value: Any, cl: Any) -> Any:
    choices = typing.get_args(cl)
    if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
        listed = ", ".join(map(str, choices))
        raise ValueError(f"must be one of {listed}, got {json.dumps(value)}")
    return value


def _members(cl: Any) -> tuple[frozenset[Any], bool] | None:
    """The non-None members of a union type and whether it admits None; None if not a union."""
    if typing.get_origin(cl) not in (typing.Union, types.UnionType):
        return None
    args = typing.get_args(cl)
    return frozenset(a for a in args if a is not type(None)), type(None) in args


def _tagged(converter: cattrs.Converter) -> tuple[Callable[[Any], bool], Callable[..., Any]]:
    """Hooks for the model's tagged unions (``{"type": "bits", ...}``): decode by the tag, and
    say which tags exist when it is missing or unknown, instead of cattrs' "no match"."""
    every = {**apps.UNIONS, **repos.UNIONS}
    unions = {_members(u)[0]: spec for u, spec in every.items()}  # type: ignore[index]
    shaped = _members(apps.StagingResponse)[0]  # type: ignore[index]

    def matches(cl: Any) -> bool:
        members = _members(cl)
        return members is not None and (members[0] in unions or members[0] == shaped)

    def hook(value: Any, cl: Any) -> Any:
        members, nullable = _members(cl)  # type: ignore[misc]
        if value is None and nullable:
            return None
        if not isinstance(value, dict):
            raise ValueError(f"must be an object, got {_json_type(value)}")
        if members == shaped:
            kind = (
                apps.DockerStagingResponse
                if "start_command" in value
                else apps.BuildpackStagingResponse
            )
            return converter.structure(value, kind)
        field, choices = unions[members]
        tag = value.get(field)
        if tag not in choices:
            listed = ", ".join(choices)
            error = ValueError(f"must be one of {listed}, got {json.dumps(tag)}")
            error.__notes__ = [AttributeValidationNote(f"Structuring {field}", field, str)]
            raise cattrs.ClassValidationError("bad tag", [error], cl)
        return converter.structure(value, choices[tag])

    return matches, hook


def _make_converter() -> cattrs.Converter:
    c = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for kind in (bool, int, float, str):
        c.register_structure_hook(kind, _strict(kind))
    for newtype, (kind, check) in CHECKS.items():
        c.register_structure_hook(newtype, _checked(kind, check))
    c.register_structure_hook(datetime, lambda v, _: parse_time(_strict(str)(v, None)))
    c.register_structure_hook(hosts.Domains, _domains_hook(c))
    c.register_unstructure_hook(datetime, format_time)
    c.register_structure_hook(common.Instant, lambda v, _: parse_time(_strict(str)(v, None)))
    c.register_unstructure_hook(common.Instant, format_instant)
    c.register_structure_hook_func(lambda t: getattr(t, "__origin__", None) is dict, _dict_hook(c))
    c.register_structure_hook_factory(attrs.has, lambda cl: _object_hook(c, cl))
    c.register_structure_hook_func(lambda t: typing.get_origin(t) is Literal, _literal_hook)
    c.register_structure_hook_func(*_tagged(c))
    for ref in RELATIONSHIPS:
        c.register_structure_hook(ref, _relationship_hook(c, ref))
    c.register_unstructure_hook(  # seed 001's config object, unchanged until a check is set
        platform.ServiceConfig,
        make_dict_unstructure_fn(
            platform.ServiceConfig,
            c,
            health_check=override(omit_if_default=True),
            min_ready=override(omit_if_default=True),
            progress_deadline=override(omit_if_default=True),
            stop_timeout=override(omit_if_default=True),
        ),
    )
    c.register_unstructure_hook(
        apps.BuildpackStagingResponse,
        make_dict_unstructure_fn(
            apps.BuildpackStagingResponse, c, commit=override(omit_if_default=True)
        ),
    )
    # Seed 001 spells this field in camelCase; Python does not.
    renames = {"commit_message": override(rename="commitMessage")}
    c.register_structure_hook(
        platform.Build,
        make_dict_structure_fn(platform.Build, c, _cattrs_forbid_extra_keys=True, **renames),
    )
    c.register_unstructure_hook(
        platform.Build, make_dict_unstructure_fn(platform.Build, c, **renames)
    )
    # Seed 001 has ``expiry`` on the gitlab object only: left out when unset.
    c.register_unstructure_hook(
        vendor_model.Vendor,
        make_dict_unstructure_fn(vendor_model.Vendor, c, expiry=override(omit_if_default=True)),
    )
    return c


converter = _make_converter()


def _path(notes: list[str]) -> str:
    path = ""
    for note in notes:
        path += note if note.startswith("[") else f".{note}"
    return path.lstrip(".") or "body"


def _flatten(exc: BaseException, notes: list[str], out: list[FieldError]) -> None:
    if isinstance(exc, ForbiddenExtraKeysError):
        for extra in sorted(exc.extra_fields):
            out.append(FieldError(_path([*notes, extra]), "unknown field"))
        return
    if isinstance(exc, cattrs.BaseValidationError):
        for sub in exc.exceptions:
            sub_notes = list(notes)
            for note in getattr(sub, "__notes__", []):
                # cattrs' notes are str subclasses carrying .name or .index; ours are plain str.
                if isinstance(note, AttributeValidationNote):
                    sub_notes.append(note.name)
                elif isinstance(note, IterableValidationNote):
                    sub_notes.append(f"[{note.index!r}]")
                elif type(note) is str and note.startswith("["):
                    sub_notes.append(note)
            _flatten(sub, sub_notes, out)
        return
    if isinstance(exc, KeyError):
        out.append(FieldError(_path(notes), "is required"))
    elif isinstance(exc, ValueError | TypeError):
        message = str(exc)
        if isinstance(exc, TypeError) or not message:
            message = "has the wrong type"
        out.append(FieldError(_path(notes), message))
    else:
        out.append(FieldError(_path(notes), str(exc) or type(exc).__name__))


def structure(data: Any, cls: type[T]) -> T:
    """Decode plain JSON data into ``cls``, or raise :class:`Invalid` naming every bad field."""
    if attrs.has(cls) and not isinstance(data, dict):
        raise Invalid([FieldError("body", f"must be a JSON object, got {_json_type(data)}")])
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        errors: list[FieldError] = []
        _flatten(exc, [], errors)
        raise Invalid(errors) from None


def unstructure(obj: Any) -> Any:
    return converter.unstructure(obj)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON: the form of every etcd value and API body."""
    return dumps_plain(unstructure(obj))


def dumps_plain(data: Any) -> bytes:
    """:func:`dumps` of data already plain (maps, lists, strings, numbers)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def loads(raw: bytes | str, cls: type[T]) -> T:
    return structure(json.loads(raw), cls)


__all__ = [
    "ClassValidationError",
    "FieldError",
    "Invalid",
    "converter",
    "dumps",
    "format_time",
    "loads",
    "parse_time",
    "structure",
    "unstructure",
]
