"""``/openapi.json``: built from the router itself, so it cannot drift from the routes.

Every handler carries a :class:`~lastbackend.api.http.Doc`; request bodies are described from the
same attrs classes the converter decodes into. A test walks the router and checks that every
route is documented and every documented path exists.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import attrs
from aiohttp import web

from lastbackend.api.http import MAX_PAGE, MAX_PER_PAGE, Doc
from lastbackend.api.middlewares import (
    NODE_ROUTES,
    PUBLIC_PATHS,
    SELF_CHECKED_ROUTES,
    is_dashboard,
)
from lastbackend.codec import CHECKS, RELATIONSHIPS
from lastbackend.model import (
    apps,
    buildpacks,
    certificates,
    health,
    hosts,
    platform,
    pods,
    registries,
    routers,
)
from lastbackend.model import images as image_model
from lastbackend.model import repos as build_tags
from lastbackend.model import vendors as vendor_model
from lastbackend.model.common import Id, Instant, Name, keywords_of

_JSON = {str: "string", int: "integer", bool: "boolean", float: "number"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or ``null`` (OpenAPI 3.1 spells this in JSON Schema, not ``nullable``)."""
    if isinstance(schema.get("type"), str) and "enum" not in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def schema_of(tp: Any) -> dict[str, Any]:
    """A JSON Schema for a model type: attrs classes, dicts, unions, literals, checked NewTypes.

    A checked type's constraints come from its checker (``model.common.keywords``): the
    converter runs the checker, and this reads what the checker declares it enforces.
    """
    if tp in CHECKS:
        kind, check = CHECKS[tp]
        doc = (check.__doc__ or "").strip().splitlines()
        described = f"{tp.__name__}: {doc[0]}" if doc else tp.__name__
        return {"type": _JSON[kind], "description": described, **keywords_of(check)}
    if tp is hosts.Domains:
        return {
            "type": "object",
            "description": "host -> true (routed) or false (held, not routed)",
            "propertyNames": schema_of(hosts.RouteHost),
            "additionalProperties": {"type": "boolean"},
            "maxProperties": hosts.MAX_HOSTS,
        }
    if tp in _JSON:
        return {"type": _JSON[tp]}
    if tp is datetime or tp is Instant:
        return {"type": "string", "format": "date-time"}
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = list(typing.get_args(tp))
        return {"type": _JSON[type(choices[0])], "enum": choices}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = schema_of(args[0]) if len(args) == 1 else {"oneOf": [schema_of(a) for a in args]}
        return nullable(inner) if type(None) in typing.get_args(tp) else inner
    if origin is dict:
        key, value = typing.get_args(tp)
        out = {"type": "object", "additionalProperties": schema_of(value)}
        if key in CHECKS:
            out["propertyNames"] = {k: v for k, v in schema_of(key).items() if k != "type"}
        return out
    if origin in (list, tuple):
        return {"type": "array", "items": schema_of(typing.get_args(tp)[0])}
    if tp is health.HealthCheck:
        return _health_check()
    if tp in RELATIONSHIPS:
        ref = _object(tp)
        shipped = {"type": "object", "additionalProperties": False, "properties": {"data": ref}}
        shipped["required"] = ["data"]
        return {"oneOf": [ref, shipped], "description": "seed 000's shape or Cloud Foundry's"}
    if attrs.has(tp):
        return _object(tp)
    return {}


def _object(tp: type) -> dict[str, Any]:
    hints = typing.get_type_hints(tp)
    fields = attrs.fields(tp)
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {f.name: schema_of(hints[f.name]) for f in fields},
        "required": [f.name for f in fields if f.default is attrs.NOTHING],
    }


def _health_check() -> dict[str, Any]:
    """Two shapes, as the converter checks them: only an ``http`` check has an endpoint."""
    http = _object(health.HealthCheck)
    others = [t for t in typing.get_args(health.CheckType) if t != "http"]
    data = _object(health.HealthCheckData)
    data["properties"]["endpoint"] = {"type": "null", "description": "http checks only"}
    other = {
        **http,
        "properties": {
            **http["properties"],
            "type": {"type": "string", "enum": others},
            "data": data,
        },
    }
    http["properties"]["type"] = {"type": "string", "enum": ["http"]}
    return {"oneOf": [http, other]}


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    """A PATCH body, merged into the stored object: any subset of the fields, at any depth (left
    out keeps a value, ``null`` unsets one)."""
    props = {k: _optional(v) if "properties" in v else v for k, v in schema["properties"].items()}
    return {**schema, "properties": props, "required": []}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without its ``null``: for bodies where ``null`` is refused, not "leave as is"."""
    if isinstance(schema.get("type"), list):
        kinds = [t for t in schema["type"] if t != "null"]
        return {**schema, "type": kinds[0] if len(kinds) == 1 else kinds}
    if "anyOf" in schema and {"type": "null"} in schema["anyOf"]:
        rest = [s for s in schema["anyOf"] if s != {"type": "null"}]
        return rest[0] if len(rest) == 1 else {"anyOf": rest}
    return schema


def _with(schema: dict[str, Any], **props: Any) -> dict[str, Any]:
    return {
        **schema,
        "additionalProperties": False,
        "properties": {**props, **schema["properties"]},
        "required": [],
    }


_REF = {"$ref": "#/components/schemas/{}"}
_ID = {"type": "string", "format": "uuid"}
_LINKS = {"type": "object", "additionalProperties": {"type": "object"}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def schemas() -> dict[str, Any]:
    meta = schema_of(platform.Meta)
    build = schema_of(platform.Build)
    build["properties"]["commitMessage"] = build["properties"].pop("commit_message")
    return {
        "Project": _with(meta, id=_ID, links=_LINKS),
        "ProjectCreate": schema_of(platform.ProjectCreate),
        "ProjectPatch": _optional(schema_of(platform.ProjectCreate)),
        "Service": _with(
            meta,
            id=_ID,
            project=_ID,
            config=_ref("ServiceConfig"),
            source=nullable(_ref("ServiceSource")),
            domains=_ref("Domains"),
            urls={"type": "array", "items": {"type": "string"}},
            image=nullable({"type": "string"}),
            status=_ref("ServiceStatus"),
            links=_LINKS,
        ),
        "ServiceStatus": schema_of(pods.ServiceStatus),
        "Revision": schema_of(pods.Revision),
        "RollbackBody": schema_of(platform.RollbackBody),
        "ServiceCreate": schema_of(platform.ServiceCreate),
        "ServicePatch": _optional(schema_of(platform.ServiceCreate)),
        "ServiceConfig": schema_of(platform.ServiceConfig),
        "ServiceConfigPatch": _optional(schema_of(platform.ServiceConfig)),
        "ServiceSource": schema_of(platform.ServiceSource),
        "Domains": schema_of(platform.Domains),
        "ServiceSourceOrNull": nullable(_ref("ServiceSource")),
        "ServiceImage": {
            "type": "object",
            "properties": {"image": nullable({"type": "string"})},
            "required": ["image"],
        },
        "ImageBody": schema_of(platform.ImageBody),
        "Container": schema_of(platform.Container),
        "Build": _with(build, number={"type": "integer"}),
        "Registry": _with(_registry_account(), links=_LINKS),
        "RegistryCreate": schema_of(registries.RegistryCreate),
        "RegistryPatch": _optional(schema_of(registries.RegistryPatch)),
        "Buildpacks": schema_of(buildpacks.BuildpackCatalog),
        **_app_schemas(),
        **_repo_schemas(),
        **_package_schemas(),
        **_event_schemas(),
        **_vendor_image_schemas(),
        **_certificate_schemas(),
        **_system_schemas(),
        "Error": {
            "type": "object",
            "properties": {
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "code": {"type": "integer"},
                            "title": {"type": "string"},
                            "detail": {"type": "string"},
                        },
                    },
                }
            },
        },
    }


def _system_schemas() -> dict[str, Any]:
    """``/api/whoami``, ``/api/nodes``, ``/api/routers`` and ``/api/leaders``: what a dashboard
    asks first, and who runs what."""
    node = schema_of(pods.Node)
    node["properties"]["state"] = {
        "type": "string",
        "enum": ["ready", "lost"],
        "description": "ready: its agent holds its key; lost: gone, only its pods are left",
    }
    node["properties"]["pods"] = {"type": "integer", "minimum": 0}
    node["required"] = ["name", "state", "pods"]
    return {
        "WhoAmI": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "auth": {"type": "boolean", "description": "whether requests need a token"},
                "role": {"type": ["string", "null"], "enum": ["admin", "read", None]},
            },
            "required": ["auth", "role"],
        },
        "Node": node,
        "Router": schema_of(routers.Router),
        "Routing": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "revision": {
                    "type": "integer",
                    "description": "the newest change to the keys the routers read of it",
                },
                "routed": {
                    "type": "boolean",
                    "description": "every live router's loaded config includes that change",
                },
                "routers": {
                    "type": "array",
                    "items": _with(schema_of(routers.Router), current={"type": "boolean"}),
                },
            },
            "required": ["revision", "routed", "routers"],
        },
        "Leader": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "description": "services, gc, ..., node-<name>"},
                "leader": {"type": "string", "description": "the holder's host/pid/random"},
                "since_revision": {
                    "type": "integer",
                    "description": "the etcd revision its term began at",
                },
            },
            "required": ["name", "leader", "since_revision"],
        },
    }


def _lifecycle(kind: type) -> dict[str, Any]:
    schema = schema_of(kind)
    schema["properties"]["type"] = {"type": "string", "enum": [kind().type]}
    schema["required"] = ["type"]  # decoded by it: ``data`` alone says nothing
    return schema


def _app_schemas() -> dict[str, Any]:
    """The ``/v3/apps`` family; a lifecycle is one of its tagged kinds."""
    lifecycle = _tagged_union({"buildpack": "BuildpackLifecycle", "docker": "DockerLifecycle"})
    create = schema_of(apps.AppCreate)
    create["properties"]["lifecycle"] = nullable(_ref("Lifecycle"))
    update = schema_of(apps.AppUpdate)
    update["properties"] = {k: _not_null(v) for k, v in update["properties"].items()}
    update["properties"]["lifecycle"] = _ref("Lifecycle")  # ``null`` is refused, not ignored
    stamp = {"type": "string", "format": "date-time"}
    return {
        "BuildpackLifecycle": _lifecycle(apps.BuildpackLifecycle),
        "DockerLifecycle": _lifecycle(apps.DockerLifecycle),
        "Lifecycle": lifecycle,
        "App": {
            "type": "object",
            "properties": {
                "guid": _ID,
                "name": {"type": "string"},
                "desired_state": {"type": "string", "enum": list(apps.DESIRED_STATES)},
                "lifecycle": _ref("Lifecycle"),
                "environment_variables": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                },
                "relationships": {"type": "object"},
                "created_at": stamp,
                "updated_at": nullable(stamp),
                "links": _LINKS,
            },
        },
        "AppCreate": create,
        "AppUpdate": _optional(update),
        "CurrentDropletBody": schema_of(apps.CurrentDropletBody),
        "CurrentDroplet": {
            "type": "object",
            "properties": {"data": schema_of(apps.DropletRef), "links": _LINKS},
        },
        "Droplet": {
            "type": "object",
            "properties": {
                "guid": _ID,
                "state": {"type": "string", "enum": list(apps.DROPLET_STATES)},
                "error": nullable({"type": "string"}),
                "environment_variables": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                },
                "lifecycle": _ref("Lifecycle"),
                "staging_response": nullable({"type": "object"}),
                "image": nullable({"type": "string"}),
                "created_at": stamp,
                "updated_at": stamp,
                "links": _LINKS,
            },
        },
    }


def _repo_schemas() -> dict[str, Any]:
    """The build-tag family (seed 003): maps keyed by id; an artifact is one of four types."""

    def by_id(child: str) -> dict[str, Any]:
        return {
            "type": "object",
            "propertyNames": {k: v for k, v in ids.items() if k != "type"},
            "additionalProperties": _ref(child),
        }

    ids = schema_of(build_tags.PathId)

    def nested(kind: type, field: str, child: str) -> dict[str, Any]:
        schema = schema_of(kind)
        schema["properties"][field] = by_id(child)
        return schema

    out: dict[str, Any] = {}
    for tag, kind in build_tags.ARTIFACTS.items():
        schema = schema_of(kind)
        schema["properties"]["type"] = {"type": "string", "enum": [tag]}
        schema["required"] = ["type", *schema["required"]]
        out[f"{tag.capitalize()}Artifact"] = schema
    return {
        **out,
        "Artifact": _tagged_union(
            {tag: f"{tag.capitalize()}Artifact" for tag in build_tags.ARTIFACTS}
        ),
        "Tag": nested(build_tags.Tag, "artifacts", "Artifact"),
        "Branch": nested(build_tags.Branch, "tags", "Tag"),
        "Repo": nested(build_tags.Repo, "branches", "Branch"),
        "Artifacts": by_id("Artifact"),
        "Tags": by_id("Tag"),
        "RepoTags": {
            "type": "object",
            "description": "keyed <branch-id>/<tag-id>",
            "propertyNames": {
                "pattern": f"^(?:{build_tags.ID.pattern})/(?:{build_tags.ID.pattern})$"
            },
            "additionalProperties": _ref("Tag"),
        },
        "Branches": by_id("Branch"),
        "Repos": by_id("Repo"),
        "Data": {
            "type": "object",
            "properties": {"repos": _ref("Repos"), "revision": {"type": "integer"}},
        },
    }


def _tagged_union(names: Mapping[str, str]) -> dict[str, Any]:
    """One of several schemas, told apart by their ``type`` (tag -> schema name)."""
    return {
        "oneOf": [_ref(name) for name in names.values()],
        "discriminator": {
            "propertyName": "type",
            "mapping": {tag: _REF["$ref"].format(name) for tag, name in names.items()},
        },
    }


def _package_schemas() -> dict[str, Any]:
    """Packages (one of three types, secrets shown as ***) and the droplet create body."""
    stamp = {"type": "string", "format": "date-time"}
    creates = {}
    for tag, kind in apps.PACKAGE_CREATES.items():
        schema = schema_of(kind)
        schema["properties"]["type"] = {"type": "string", "enum": [tag]}
        creates[tag] = schema
    droplet_create = schema_of(apps.DropletCreate)
    droplet_create["properties"]["lifecycle"] = nullable(_ref("Lifecycle"))
    secret = {"type": "string", "description": "never returned: stored encrypted, shown as ***"}
    return {
        **{f"{tag.capitalize()}PackageCreate": schema for tag, schema in creates.items()},
        "PackageCreate": _tagged_union(
            {tag: f"{tag.capitalize()}PackageCreate" for tag in creates}
        ),
        "Package": {
            "type": "object",
            "properties": {
                "guid": _ID,
                "type": {"type": "string", "enum": list(apps.PACKAGES)},
                "state": {"type": "string", "enum": list(apps.PACKAGE_STATES)},
                "error": {"type": ["string", "null"], "description": "bits only"},
                "hash": {**schema_of(apps.Hash), "description": "bits only"},
                "image_path": {"type": "string", "description": "docker only"},
                "url": {"type": "string", "description": "git only"},
                "credentials": {
                    "type": ["object", "null"],
                    "description": "docker and git only",
                    "properties": {
                        "user": {"type": "string"},
                        "password": secret,
                        "api_key": secret,
                        "email": {"type": "string"},
                        "login_server": {"type": "string"},
                    },
                },
                "created_at": stamp,
                "updated_at": stamp,
                "links": _LINKS,
            },
        },
        "DropletCreate": droplet_create,
    }


def _event_schemas() -> dict[str, Any]:
    """One server-sent event's ``data`` (``/api/events``); ``id:`` is ``R`` or ``R.n``."""
    return {
        "Event": {
            "type": "object",
            "description": "event: created | updated | deleted (also hello {revision} and "
            "relist {revision, reason}); id: R for the last event of revision R, R.n for the "
            "n-th before it; resume with Last-Event-ID",
            "properties": {
                "kind": {"type": "string", "enum": ["created", "updated", "deleted"]},
                "key": {"type": "string", "description": "the full etcd key"},
                "object": {
                    "description": "the value (the previous one for deleted), secrets ***",
                },
                "revision": {"type": "integer"},
            },
        }
    }


def _vendor_image_schemas() -> dict[str, Any]:
    """Vendors (secrets shown as ***), images with their builds, and a push hook's answer."""
    vendor = schema_of(vendor_model.Vendor)
    secret = {"type": "string", "enum": ["***"], "description": "never returned: shown as ***"}
    vendor["properties"]["token"] = secret
    vendor["properties"]["webhook_secret"] = {
        "type": "string",
        "enum": ["***", ""],
        "description": "*** when set (never returned), empty when not: hooks are then refused",
    }
    vendor = _with(vendor, links=_LINKS)
    either = {"anyOf": [_ref("Vendor"), {"type": "object", "maxProperties": 0}]}
    image = _with(
        schema_of(image_model.ImageMeta),
        id=_ID,
        source=_ref("ServiceSource"),
        builds={"type": "array", "items": _ref("Build"), "description": "one image only"},
        links=_LINKS,
    )
    built = {
        "type": "object",
        "properties": {
            "service": _ID,
            "project": _ID,
            "image": _ID,
            "number": {"type": "integer"},
        },
    }
    return {
        "Vendor": vendor,
        "VendorConnect": schema_of(vendor_model.VendorConnect),
        "VendorMap": {
            "type": "object",
            "properties": {name: either for name in vendor_model.VENDORS},
        },
        "Image": image,
        "ImageCreate": schema_of(image_model.ImageCreate),
        "ImagePatch": _optional(schema_of(image_model.ImageCreate)),
        "HookResult": {
            "type": "object",
            "properties": {
                "builds": {"type": "array", "items": built},
                "ignored": {"type": "string", "description": "why an event started nothing"},
            },
        },
    }


UNSIGNED = frozenset({("post", "/api/hooks/{vendor}")})
"""Operations authenticated by a webhook signature instead of the bearer token."""

_MEDIA_TYPES = {"Event": "text/event-stream", "RouterCAPem": "application/x-pem-file"}
"""Responses that are not JSON, by schema name."""


def _certificate_schemas() -> dict[str, Any]:
    """Certificates per host (the key shown as ***) and the routers' CA root as PEM text."""
    cert = schema_of(certificates.Certificate)
    cert["properties"]["private_key"] = {
        "type": "string",
        "enum": ["***"],
        "description": "never returned: stored encrypted, shown as ***",
    }
    cert["properties"]["subjects"] = {"type": "array", "items": {"type": "string"}}
    body = schema_of(certificates.CertificateBody)
    body["properties"]["certificate"]["description"] = "PEM chain, leaf first"
    body["properties"]["private_key"]["description"] = "PEM, not passphrase-protected"
    return {
        "Certificate": _with(cert, links=_LINKS),
        "CertificateBody": body,
        "RouterCAPem": {"type": "string", "description": "a PEM CERTIFICATE block"},
    }


def _registry_account() -> dict[str, Any]:
    schema = schema_of(registries.RegistryAccount)
    schema["properties"]["password"] = {
        "type": "string",
        "enum": ["***"],
        "description": "never returned: stored encrypted, shown as ***",
    }
    return schema


_BODY_NAMES = {
    platform.ProjectCreate: "ProjectCreate",
    platform.ServiceCreate: "ServiceCreate",
    platform.ServiceConfig: "ServiceConfig",
    platform.ServiceSource: "ServiceSource",
    platform.Domains: "Domains",
    platform.ImageBody: "ImageBody",
    registries.RegistryCreate: "RegistryCreate",
    vendor_model.VendorConnect: "VendorConnect",
    image_model.ImageCreate: "ImageCreate",
}


_QUERY: dict[str, dict[str, Any]] = {
    "follow": {"type": "string", "enum": ["true", "false", "1", "0"], "default": "false"},
    "tail": {"type": "integer", "minimum": 0, "maximum": 10000},
    "heartbeat": {"type": "integer", "minimum": 1, "maximum": 300, "default": 15},
    "since": {"type": "string", "description": "an event id to resume after: R or R.n"},
    "prefix": {"type": "string", "description": "a key prefix under /lastbackend/"},
    "dry-run": {
        "type": "string",
        "enum": ["1", "true", "0", "false"],
        "description": "validate only: answer what would be written, write nothing",
    },
    "container": {"type": "string", "description": "a container id or a prefix of one"},
}
"""Schemas of the query parameters a :class:`Doc` names in ``query``."""

_PARAMS: dict[str, dict[str, Any]] = {
    "project": {"anyOf": [schema_of(Name), schema_of(Id)], "description": "a name or an id"},
    "service": {"anyOf": [schema_of(Name), schema_of(Id)], "description": "a name or an id"},
    "guid": schema_of(Id),
    "image": {"type": "string", "minLength": 1, "description": "an image id or name"},
    "container": {"type": "string", "minLength": 1, "description": "a container id"},
    "build": {"type": "string", "pattern": "^[1-9][0-9]{0,17}$", "description": "1, 2, ..."},
    "host": schema_of(hosts.RouteHost),
    "vendor": {"type": "string", "enum": list(vendor_model.VENDORS)},
    **{name: schema_of(build_tags.PathId) for name in ("repo", "branch", "tag", "artifact")},
    "path": {"type": "string", "minLength": 1, "description": "a file of the dashboard"},
}
"""Schemas of path parameters by name; a :class:`Doc` names the odd one out in ``params``."""

_ERRORS = {
    400: "a malformed header, query parameter or body",
    401: "no token, or one this API does not know",
    403: "a read-only token asked to write",
    404: "no such object",
    409: "it exists already, or is being changed",
    412: "If-Match names a version that is not the current one",
    413: "the body is larger than the API takes",
    415: "the body is not of the type the operation takes",
    421: "the Host header names no host this API serves (api.hosts)",
    422: "the body does not decode into the model: each error names the field",
    429: "too many streams open: retry after Retry-After seconds",
    503: "the store is unreachable: retry",
}
"""What each error status means; every one has the ``Error`` body."""


def _query(name: str, kind: Any) -> dict[str, Any]:
    if kind is None:
        return {"name": name, "in": "query", "schema": _QUERY.get(name, {"type": "string"})}
    items = schema_of(kind)
    return {
        "name": name,
        "in": "query",
        "style": "form",
        "explode": False,
        "description": "a comma-separated list",
        "schema": {"type": "array", "items": items, "minItems": 1},
    }


def _operation(spec: Doc, method: str, path: str) -> dict[str, Any]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for seg in path.split("/")
        if seg.startswith("{")
        for name in [seg[1:-1]]
        for schema in [schema_of(spec.params[name]) if name in spec.params else _PARAMS[name]]
    ]
    if spec.paginated:
        orders = [o for field in spec.order for o in (field, f"-{field}")]
        params += [
            {
                "name": "page",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
            },
            {
                "name": "per_page",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE},
            },
            {"name": "order_by", "in": "query", "schema": {"type": "string", "enum": orders}},
        ]
    query = spec.query if isinstance(spec.query, Mapping) else dict.fromkeys(spec.query)
    params += [_query(name, kind) for name, kind in query.items()]
    op: dict[str, Any] = {"summary": spec.summary, "parameters": params}
    if spec.body is not None:
        name = spec.body if isinstance(spec.body, str) else _BODY_NAMES[spec.body]
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(name)}},
        }
    ok: dict[str, Any] = {"description": spec.summary}
    if spec.response:
        item = _ref(spec.response)
        schema = (
            {
                "type": "object",
                "properties": {
                    "pagination": {"type": "object"},
                    "resources": {"type": "array", "items": item},
                },
            }
            if spec.paginated
            else item
        )
        media = _MEDIA_TYPES.get(spec.response, "application/json")
        ok["content"] = {media: {"schema": schema}}
    public = path in PUBLIC_PATHS or is_dashboard(path)
    codes = [c for c in _ERRORS if not (public and c in (401, 403, 404))]
    if spec.body is None:
        codes = [c for c in codes if c not in (413, 415, 422)]
    if method == "GET":
        codes = [c for c in codes if c not in (409, 412)]
    error = {"content": {"application/json": {"schema": _ref("Error")}}}
    created = {"201": {**ok, "description": "created"}} if spec.upsert else {}
    op["responses"] = {
        str(spec.status): ok,
        **created,
        **{str(code): {"description": _ERRORS[code], **error} for code in codes},
    }
    return op


def documented_routes(app: web.Application) -> list[tuple[str, str, Doc | None]]:
    """(method, path template, doc) for every route but aiohttp's automatic HEADs."""
    out = []
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        out.append(
            (route.method, route.resource.canonical, getattr(route.handler, "__doc_spec__", None))
        )
    return out


def build(app: web.Application) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, spec in documented_routes(app):
        if spec is not None:
            paths.setdefault(path, {})[method.lower()] = _operation(spec, method, path)
            if (method.lower(), path) in UNSIGNED or path in PUBLIC_PATHS or is_dashboard(path):
                paths[path][method.lower()]["security"] = []
            if path in SELF_CHECKED_ROUTES:  # a token is optional: none, or a valid one
                paths[path][method.lower()]["security"] = [{}, {"bearer": []}]
            if path.startswith(NODE_ROUTES):
                paths[path][method.lower()]["security"] = [{"node": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "lastbackend", "version": "0.1.0"},
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "node": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "auth.node_token: what API processes send to node agents; "
                    "node routes accept no user token",
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
