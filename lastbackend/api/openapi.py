"""``/openapi.json``: built from the router itself, so it cannot drift from the routes.

Every handler carries a :class:`~lastbackend.api.http.Doc`; request bodies are described from the
same attrs classes the converter decodes into. A test walks the router and checks that every
route is documented and every documented path exists.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime
from typing import Any

import attrs
from aiohttp import web

from lastbackend.api.http import Doc
from lastbackend.api.middlewares import NODE_ROUTES
from lastbackend.codec import CHECKS
from lastbackend.model import apps, certificates, platform, pods, registries
from lastbackend.model import images as image_model
from lastbackend.model import repos as build_tags
from lastbackend.model import vendors as vendor_model

_JSON = {str: "string", int: "integer", bool: "boolean", float: "number"}


def schema_of(tp: Any) -> dict[str, Any]:
    """A JSON Schema for a model type: attrs classes, dicts, optionals, scalars, NewTypes."""
    if tp in CHECKS:
        kind, check = CHECKS[tp]
        doc = (check.__doc__ or "").strip() or tp.__name__
        return {"type": _JSON[kind], "description": f"{tp.__name__}: {doc}"}
    if tp in _JSON:
        return {"type": _JSON[tp]}
    if tp is datetime:
        return {"type": "string", "format": "date-time"}
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = schema_of(args[0])
        return {**inner, "nullable": True}
    if origin is dict:
        _, value = typing.get_args(tp)
        return {"type": "object", "additionalProperties": schema_of(value)}
    if attrs.has(tp):
        hints = typing.get_type_hints(tp)
        fields = attrs.fields(tp)
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {f.name: schema_of(hints[f.name]) for f in fields},
            "required": [f.name for f in fields if f.default is attrs.NOTHING],
        }
    return {}


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "required": []}


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
            source={**_ref("ServiceSource"), "nullable": True},
            domains=_ref("Domains"),
            urls={"type": "array", "items": {"type": "string"}},
            image={"type": "string", "nullable": True},
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
        "Image": {"type": "object", "properties": {"image": {"type": "string", "nullable": True}}},
        "ImageBody": schema_of(platform.ImageBody),
        "Container": schema_of(platform.Container),
        "Build": _with(build, number={"type": "integer"}),
        "Registry": _with(_registry_account(), links=_LINKS),
        "RegistryCreate": schema_of(registries.RegistryCreate),
        "RegistryPatch": _optional(schema_of(registries.RegistryPatch)),
        **_app_schemas(),
        **_repo_schemas(),
        **_package_schemas(),
        **_event_schemas(),
        **_vendor_image_schemas(),
        **_certificate_schemas(),
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


def _lifecycle(kind: type) -> dict[str, Any]:
    schema = schema_of(kind)
    schema["properties"]["type"] = {"type": "string", "enum": [kind().type]}
    return schema


def _app_schemas() -> dict[str, Any]:
    """The ``/v3/apps`` family; a lifecycle is one of its tagged kinds."""
    lifecycle = {"oneOf": [_ref("BuildpackLifecycle"), _ref("DockerLifecycle")]}
    nullable_lifecycle = {**lifecycle, "nullable": True}
    create = schema_of(apps.AppCreate)
    create["properties"]["lifecycle"] = nullable_lifecycle
    update = schema_of(apps.AppUpdate)
    update["properties"]["lifecycle"] = nullable_lifecycle
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
                "updated_at": {**stamp, "nullable": True},
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
                "error": {"type": "string", "nullable": True},
                "environment_variables": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                },
                "lifecycle": _ref("Lifecycle"),
                "staging_response": {"type": "object", "nullable": True},
                "image": {"type": "string", "nullable": True},
                "created_at": stamp,
                "updated_at": stamp,
                "links": _LINKS,
            },
        },
    }


def _repo_schemas() -> dict[str, Any]:
    """The build-tag family (seed 003): maps keyed by id; an artifact is one of four types."""

    def by_id(child: str) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": _ref(child)}

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
    names = [f"{tag.capitalize()}Artifact" for tag in build_tags.ARTIFACTS]
    return {
        **out,
        "Artifact": {
            "oneOf": [_ref(name) for name in names],
            "discriminator": {"propertyName": "type"},
        },
        "Tag": nested(build_tags.Tag, "artifacts", "Artifact"),
        "Branch": nested(build_tags.Branch, "tags", "Tag"),
        "Repo": nested(build_tags.Repo, "branches", "Branch"),
        "Artifacts": by_id("Artifact"),
        "Tags": by_id("Tag"),
        "Branches": by_id("Branch"),
        "Repos": by_id("Repo"),
        "Data": {
            "type": "object",
            "properties": {"repos": _ref("Repos"), "revision": {"type": "integer"}},
        },
    }


def _package_schemas() -> dict[str, Any]:
    """Packages (one of three types, secrets shown as ***) and the droplet create body."""
    stamp = {"type": "string", "format": "date-time"}
    creates = {}
    for tag, kind in apps.PACKAGE_CREATES.items():
        schema = schema_of(kind)
        schema["properties"]["type"] = {"type": "string", "enum": [tag]}
        creates[f"{tag.capitalize()}PackageCreate"] = schema
    droplet_create = schema_of(apps.DropletCreate)
    droplet_create["properties"]["lifecycle"] = {**_ref("Lifecycle"), "nullable": True}
    secret = {"type": "string", "description": "never returned: stored encrypted, shown as ***"}
    return {
        **creates,
        "PackageCreate": {
            "oneOf": [_ref(name) for name in creates],
            "discriminator": {"propertyName": "type"},
        },
        "Package": {
            "type": "object",
            "properties": {
                "guid": _ID,
                "type": {"type": "string", "enum": list(apps.PACKAGES)},
                "state": {"type": "string", "enum": list(apps.PACKAGE_STATES)},
                "error": {"type": "string", "nullable": True, "description": "bits only"},
                "hash": {**schema_of(apps.Hash), "description": "bits only"},
                "image_path": {"type": "string", "description": "docker only"},
                "url": {"type": "string", "description": "git only"},
                "credentials": {
                    "type": "object",
                    "nullable": True,
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
                    "nullable": True,
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
    either = {"oneOf": [_ref("Vendor"), {"type": "object", "maxProperties": 0}]}
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
    "follow": {"type": "boolean", "default": False},
    "tail": {"type": "integer", "minimum": 0, "maximum": 10000},
    "heartbeat": {"type": "integer", "minimum": 1, "maximum": 300, "default": 15},
    "since": {"type": "string", "description": "an event id to resume after: R or R.n"},
    "prefix": {"type": "string", "description": "a key prefix under /lastbackend/"},
}
"""Schemas of the query parameters a :class:`Doc` names in ``query``; others are strings."""


def _operation(spec: Doc, path: str) -> dict[str, Any]:
    params = [
        {"name": seg[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
        for seg in path.split("/")
        if seg.startswith("{")
    ]
    if spec.paginated:
        params += [
            {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            {"name": "per_page", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            {"name": "order_by", "in": "query", "schema": {"type": "string"}},
        ]
    params += [
        {"name": name, "in": "query", "schema": _QUERY.get(name, {"type": "string"})}
        for name in spec.query
    ]
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
    error = {"description": "error", "content": {"application/json": {"schema": _ref("Error")}}}
    op["responses"] = {str(spec.status): ok, "4XX": error, "5XX": error}
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
            paths.setdefault(path, {})[method.lower()] = _operation(spec, path)
            if (method.lower(), path) in UNSIGNED:
                paths[path][method.lower()]["security"] = []
            if path.startswith(NODE_ROUTES):
                paths[path][method.lower()]["security"] = [{"node": []}]
    return {
        "openapi": "3.0.3",
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
