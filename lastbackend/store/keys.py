"""The /lastbackend key tree: the only module that spells or parses an etcd path.

Every key an admin sees with ``etcdctl get --prefix /lastbackend`` is built here, so the layout
documented in the README and in seed 001 has exactly one implementation. Callers pass ids and
names that the model has already validated (UUIDs and DNS labels), so no segment can contain a
``/`` and escape its place in the tree.

Watchers get raw keys back and need to know what they name: the ``*_of`` functions are the
inverses of the builders, each returning the parts of a key of one shape (a small named tuple)
or ``None`` for any other key, so no caller splits a path itself.

Prefixes end with ``/`` on purpose: a range or delete over ``projects/<pid>/`` can never touch
``projects/<pid>2/``.
"""

from __future__ import annotations

from typing import NamedTuple

from lastbackend.model.common import is_uuid

ROOT = "/lastbackend/"

SERVICE_PARTS = ("meta", "config", "source", "domains", "image")
"""The single-value keys of a service, in the order the API composes them."""
APP_PARTS = ("lifecycle", "app")
"""The single-value keys the ``/v3`` family adds to a service (DESIGN.md section 4)."""
STATUS_PARTS = ("status",)
"""The services controller's report on a service (its rollout): read with it, never written by
the API."""
_PARTS = frozenset(SERVICE_PARTS + APP_PARTS + STATUS_PARTS)


def prefix_end(prefix: str) -> bytes:
    """The exclusive end of a range covering every key that starts with ``prefix``.

    Bytes, not text: incrementing the last byte of a UTF-8 string need not give valid UTF-8.
    """
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"
    raw[-1] += 1
    return bytes(raw)


def _segments(prefix: str, key: str) -> list[str] | None:
    """The segments of ``key`` below ``prefix``; ``None`` if it is not below it or has an empty
    segment (``//``, a trailing ``/``), which no key of the tree has."""
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix) :].split("/")
    return None if "" in parts else parts


def entry(index: str, name: str) -> str:
    """The key of ``name`` in a collection or name index ``index`` (a prefix ending in ``/``)."""
    return f"{index}{name}"


def entry_of(index: str, key: str) -> str | None:
    """The inverse of :func:`entry`: the name ``key`` holds directly under ``index``, or ``None``
    for a key elsewhere or deeper (``helper/projects/<pid>/services/<name>`` is no project
    name)."""
    parts = _segments(index, key)
    return parts[0] if parts is not None and len(parts) == 1 else None


def leaf(key: str) -> str:
    """The last segment of a key: a name in an index, an id in a collection."""
    return key.rsplit("/", 1)[-1]


# what a parsed key names ------------------------------------------------------------------------


class ServiceRef(NamedTuple):
    """A service, by its project's id and its own."""

    project: str
    service: str


class ContainerRef(NamedTuple):
    """``projects/<project>/services/<service>/containers/<container>``."""

    project: str
    service: str
    container: str


class OwnedRef(NamedTuple):
    """``projects/<project>/services/<service>/<collection>/<guid>``: a package or a droplet."""

    project: str
    service: str
    collection: str  # "packages" | "droplets"
    guid: str


class BuildRef(NamedTuple):
    """A build: of a service (``project`` and ``service`` set) or of an image (``image`` set)."""

    project: str
    service: str
    image: str
    number: int


class PodRef(NamedTuple):
    """``pods/<node>/<pod>``: a pod spec assigned to a node."""

    node: str
    pod: str


# projects ---------------------------------------------------------------------------------------

PROJECTS = f"{ROOT}projects/"


def project(pid: str) -> str:
    """The project's subtree (with its trailing slash)."""
    return f"{PROJECTS}{pid}/"


def project_meta(pid: str) -> str:
    return f"{project(pid)}meta"


# services ---------------------------------------------------------------------------------------


def services(pid: str) -> str:
    return f"{project(pid)}services/"


def service(pid: str, sid: str) -> str:
    """The service's subtree (with its trailing slash)."""
    return f"{services(pid)}{sid}/"


def service_part(pid: str, sid: str, part: str) -> str:
    if part not in _PARTS:
        raise ValueError(f"unknown service part {part!r}")
    return f"{service(pid, sid)}{part}"


def revisions(pid: str, sid: str) -> str:
    """The service's deployed pod templates, ``revisions/<n>`` (with its trailing slash)."""
    return f"{service(pid, sid)}revisions/"


def revision(pid: str, sid: str, number: int) -> str:
    return f"{revisions(pid, sid)}{number}"


def revision_of(key: str) -> tuple[ServiceRef, int] | None:
    """The inverse of :func:`revision`; ``None`` for any other key."""
    match _segments(PROJECTS, key):
        case [pid, "services", sid, "revisions", number] if _is_number(number):
            return ServiceRef(pid, sid), int(number)
    return None


def containers(pid: str, sid: str) -> str:
    return f"{service(pid, sid)}containers/"


def container(pid: str, sid: str, container_id: str) -> str:
    return f"{containers(pid, sid)}{container_id}"


def builds(pid: str, sid: str) -> str:
    return f"{service(pid, sid)}builds/"


def build(pid: str, sid: str, number: int) -> str:
    return f"{builds(pid, sid)}{number}"


_PACKAGES = "packages"
_DROPLETS = "droplets"


def packages(pid: str, sid: str) -> str:
    return f"{service(pid, sid)}{_PACKAGES}/"


def package(pid: str, sid: str, guid: str) -> str:
    """``services/<sid>/packages/<guid>``: a bits, docker or git package of the app."""
    return entry(packages(pid, sid), guid)


def droplets(pid: str, sid: str) -> str:
    return f"{service(pid, sid)}{_DROPLETS}/"


def droplet(pid: str, sid: str, guid: str) -> str:
    """``services/<sid>/droplets/<guid>``: one staging of a package and its result."""
    return entry(droplets(pid, sid), guid)


# images and vendors (seed 001) ------------------------------------------------------------------

IMAGES = f"{ROOT}images/"
IMAGE_PARTS = ("meta", "source")


def image(iid: str) -> str:
    """The image's subtree (with its trailing slash)."""
    return f"{IMAGES}{iid}/"


def image_part(iid: str, part: str) -> str:
    if part not in IMAGE_PARTS:
        raise ValueError(f"unknown image part {part!r}")
    return f"{image(iid)}{part}"


def image_builds(iid: str) -> str:
    return f"{image(iid)}builds/"


def image_build(iid: str, number: int) -> str:
    """``images/<iid>/builds/<n>``: a build of the image (seed 001)."""
    return f"{image_builds(iid)}{number}"


VENDORS = f"{ROOT}vendors/"


def vendor(name: str) -> str:
    """``vendors/<vendor>``: a connected github/bitbucket/gitlab/slack account (token encrypted)."""
    return f"{VENDORS}{name}"


# helpers: name -> id indexes --------------------------------------------------------------------

HELPER = f"{ROOT}helper/"
HELPER_PROJECTS = f"{HELPER}projects/"


def project_name(name: str) -> str:
    """``helper/projects/<name>`` -> project id."""
    return entry(HELPER_PROJECTS, name)


def service_names(pid: str) -> str:
    """The project's service-name index (with its trailing slash)."""
    return f"{HELPER_PROJECTS}{pid}/services/"


def service_name(pid: str, name: str) -> str:
    """``helper/projects/<pid>/services/<name>`` -> service id."""
    return entry(service_names(pid), name)


def project_helpers(pid: str) -> str:
    """Every helper key owned by a project, except its own name key."""
    return f"{HELPER_PROJECTS}{pid}/"


HELPER_PODS = f"{HELPER}pods/"


def pod(pod_id: str) -> str:
    """``helper/pods/<pod id>`` -> ``<pid>:<sid>``."""
    return f"{HELPER_PODS}{pod_id}"


HELPER_APPS = f"{HELPER}apps/"
HELPER_PACKAGES = f"{HELPER}packages/"
HELPER_DROPLETS = f"{HELPER}droplets/"


def app_owner(guid: str) -> str:
    """``helper/apps/<guid>`` -> ``<pid>``: finds an app (a service) from its guid alone."""
    return f"{HELPER_APPS}{guid}"


def package_owner(guid: str) -> str:
    """``helper/packages/<guid>`` -> ``<pid>:<sid>``."""
    return f"{HELPER_PACKAGES}{guid}"


def droplet_owner(guid: str) -> str:
    """``helper/droplets/<guid>`` -> ``<pid>:<sid>``."""
    return f"{HELPER_DROPLETS}{guid}"


HELPER_IMAGES = f"{HELPER}images/"


def image_name(name: str) -> str:
    """``helper/images/<name>`` -> ``<iid>``, keeping image names unique.

    An image name is a docker repository and holds ``/`` (``registry.local:5000/acme/web``), so
    it is percent-encoded into one segment: ``helper/images/registry.local:5000%2Facme%2Fweb``.
    The names the model accepts have no ``%`` of their own, so the encoding is one-to-one.
    """
    return entry(HELPER_IMAGES, name.replace("/", "%2F"))


def owner_value(pid: str, sid: str) -> str:
    """The value of a package's, droplet's or pod's helper key: ``<pid>:<sid>``."""
    return f"{pid}:{sid}"


def parse_owner(raw: bytes) -> ServiceRef | None:
    """The inverse of :func:`owner_value`: ``b"<pid>:<sid>"`` -> the service; ``None`` if
    malformed (a helper key is read from etcd, which anyone with access can write)."""
    pid, sep, sid = raw.decode(errors="replace").partition(":")
    return ServiceRef(pid, sid) if sep and is_uuid(pid) and is_uuid(sid) else None


def owner_of_contained(key: str) -> str | None:
    """The helper key that points at ``key`` if it is a package or droplet, else ``None``.

    ``.../services/<sid>/packages/<guid>`` -> ``helper/packages/<guid>``, and so for droplets:
    deleting a service or project deletes these with it.
    """
    found = owned_of(key)
    if found is None:
        return None
    owner = package_owner if found.collection == _PACKAGES else droplet_owner
    return owner(found.guid)


def is_project_name_key(key: str) -> bool:
    """True for ``helper/projects/<name>``, False for the ``<pid>/services/...`` beside it."""
    return entry_of(HELPER_PROJECTS, key) is not None


# added by DESIGN.md section 4 ------------------------------------------------------------------

REGISTRIES = f"{ROOT}registries/"


def registry(host: str) -> str:
    """``registries/<host>``: a registry account (password encrypted)."""
    return f"{REGISTRIES}{host}"


NODES = f"{ROOT}nodes/"


def node(name: str) -> str:
    """``nodes/<name>``: a node agent's info, on its lease."""
    return f"{NODES}{name}"


PODS = f"{ROOT}pods/"


def node_pods(node_name: str) -> str:
    """The pods assigned to a node (with its trailing slash)."""
    return f"{PODS}{node_name}/"


def pod_spec(node_name: str, pod_id: str) -> str:
    """``pods/<node>/<pod id>``: a pod spec assigned to a node."""
    return f"{node_pods(node_name)}{pod_id}"


# routing (issue 11): hosts held by services, users' certificates, the router's CA -----------

HELPER_DOMAINS = f"{ROOT}helper/domains/"


def domain(host: str) -> str:
    """``helper/domains/<host> -> <pid>:<sid>``: the one service that holds a host (one of its
    ``domains``, routed or not), written in the same txn as the service's ``domains``."""
    return f"{HELPER_DOMAINS}{host}"


def domain_of(key: str) -> str | None:
    """The inverse of :func:`domain`; ``None`` for any other key."""
    return entry_of(HELPER_DOMAINS, key)


CERTIFICATES = f"{ROOT}certificates/"


def certificate(host: str) -> str:
    """``certificates/<host>``: a user's certificate chain and (encrypted) key for a host."""
    return f"{CERTIFICATES}{host}"


ROUTER_CA = f"{ROOT}router/ca"
"""The routers' shared internal CA: root certificate and (encrypted) key, made once."""

LIFECYCLE_DESCRIPTOR = f"{ROOT}lifecycle/descriptor"
"""The lifecycle descriptor in use (document 002), written by the daemon that loaded it."""

HOOK_DELIVERIES = f"{ROOT}hooks/deliveries/"


def hook_delivery(vendor: str, delivery: str) -> str:
    """``hooks/deliveries/<vendor>/<delivery id>``: a push webhook delivery already taken, with
    the builds it queued, on a lease of its own so it goes away by itself. ``delivery`` is
    checked by ``store.deliveries.is_delivery_id`` (no ``/``, at most 128 characters)."""
    return f"{HOOK_DELIVERIES}{vendor}/{delivery}"


ROUTERS = f"{ROOT}system/routers/"


def router(name: str) -> str:
    """``system/routers/<name>``: a live router and the revision of ``projects/`` its loaded
    config reflects, on the router's lease (``lastbackend push`` waits for each to pass its app).
    Under ``system/``, so the dashboards' event stream leaves its frequent rewrites out."""
    return f"{ROUTERS}{name}"


LEADERS = f"{ROOT}system/leader/"

EVENTS_PUBLISHED = f"{ROOT}system/events/published"
"""``system/events/published``: the revision of the build-tag tree up to which the events leader
has published AMQP messages (a decimal number, written fenced about twice a second), where the
next leader starts publishing from (:mod:`lastbackend.controllers.build_tag_events`)."""

INSTALLATION = f"{ROOT}system/installation"
"""``system/installation``: this installation's id (32 hex digits, made once by the first
process that asks; :mod:`lastbackend.store.installation`)."""


def leader(controller: str) -> str:
    """``system/leader/<controller>``: the election key of one controller, on the leader's lease."""
    return f"{LEADERS}{controller}"


# build tags (seed 003): repos/<r>/meta, .../branches/<b>/meta, .../tags/<t>/meta, .../artifacts/<a>

REPOS = f"{ROOT}repos/"
_REPO_LEVELS = ("branches", "tags", "artifacts")
"""The collection segment in front of each id after the repo's: ``branches/<b>``, ``tags/<t>``,
``artifacts/<a>``."""


def repo_object(ids: tuple[str, ...]) -> str:
    """The subtree (with its trailing slash) of a repo, branch or tag, named by its ids.

    ``(r,)`` -> ``repos/<r>/``, ``(r, b)`` -> ``repos/<r>/branches/<b>/``, ``(r, b, t)`` ->
    ``repos/<r>/branches/<b>/tags/<t>/``. An artifact is one key, not a subtree: see
    :func:`repo_key`.
    """
    if not 1 <= len(ids) <= 3:
        raise ValueError(f"a repo, branch or tag has 1 to 3 ids, got {ids!r}")
    path = f"{REPOS}{ids[0]}/"
    for level, oid in zip(_REPO_LEVELS, ids[1:], strict=False):
        path += f"{level}/{oid}/"
    return path


def repo_key(ids: tuple[str, ...]) -> str:
    """The key holding an object's own fields: ``.../meta`` of a repo, branch or tag, or the
    artifact's ``.../tags/<t>/artifacts/<a>`` itself."""
    if len(ids) == 4:
        return f"{repo_object(ids[:3])}artifacts/{ids[3]}"
    return f"{repo_object(ids)}meta"


def repo_ids(key: str) -> tuple[str, ...] | None:
    """The inverse of :func:`repo_key`: the ids of the object a key holds, or ``None`` for a key
    that is not a repo's, branch's or tag's ``meta`` or an artifact.

    A watch on :data:`REPOS` uses it to tell what changed: the number of ids is the level (1 repo,
    2 branch, 3 tag, 4 artifact). The document's address of the object (its AMQP address) is the
    key without :data:`ROOT` and, but for an artifact, without ``/meta``.
    """
    if not key.startswith(REPOS):
        return None
    parts = key[len(REPOS) :].split("/")
    if len(parts) not in (2, 4, 6, 7) or "" in parts:
        return None
    ids = [parts[0]]
    for i, level in enumerate(_REPO_LEVELS[: (len(parts) - 1) // 2]):
        if parts[1 + 2 * i] != level:
            return None
        ids.append(parts[2 + 2 * i])
    if len(parts) != 7 and parts[-1] != "meta":
        return None
    return tuple(ids)


# parsing the keys under projects/ and pods/ (the tuples they return are above) ----------------


def project_meta_of(key: str) -> str | None:
    """The project id of a ``projects/<pid>/meta`` key; ``None`` for any other key."""
    match _segments(PROJECTS, key):
        case [pid, "meta"]:
            return pid
    return None


def service_of(key: str) -> ServiceRef | None:
    """The service whose subtree holds ``key`` (``projects/<pid>/services/<sid>/...``), or
    ``None`` for a key outside every service (a project's ``meta``)."""
    match _segments(PROJECTS, key):
        case [pid, "services", sid, _, *_]:
            return ServiceRef(pid, sid)
    return None


def service_part_of(key: str) -> tuple[ServiceRef, str] | None:
    """The service and part of a ``projects/<pid>/services/<sid>/<part>`` key (a part in
    :data:`SERVICE_PARTS`, :data:`APP_PARTS` or :data:`STATUS_PARTS`); ``None`` for any other."""
    match _segments(PROJECTS, key):
        case [pid, "services", sid, part] if part in _PARTS:
            return ServiceRef(pid, sid), part
    return None


def container_of(key: str) -> ContainerRef | None:
    """The inverse of :func:`container`; ``None`` for any other key."""
    match _segments(PROJECTS, key):
        case [pid, "services", sid, "containers", container_id]:
            return ContainerRef(pid, sid, container_id)
    return None


def owned_of(key: str) -> OwnedRef | None:
    """The inverse of :func:`package` and :func:`droplet`; ``None`` for any other key."""
    match _segments(PROJECTS, key):
        case [pid, "services", sid, collection, guid] if collection in (_PACKAGES, _DROPLETS):
            return OwnedRef(pid, sid, collection, guid)
    return None


def package_of(key: str) -> OwnedRef | None:
    """The inverse of :func:`package`; ``None`` for any other key (a droplet's included)."""
    found = owned_of(key)
    return found if found is not None and found.collection == _PACKAGES else None


def droplet_of(key: str) -> OwnedRef | None:
    """The inverse of :func:`droplet`; ``None`` for any other key (a package's included)."""
    found = owned_of(key)
    return found if found is not None and found.collection == _DROPLETS else None


def build_of(key: str) -> BuildRef | None:
    """The inverse of :func:`build` and :func:`image_build`; ``None`` for any other key,
    including a number spelled otherwise than they spell it (``007``, ``²``)."""
    ref: BuildRef | None = None
    match _segments(PROJECTS, key):
        case [pid, "services", sid, "builds", number] if _is_number(number):
            ref = BuildRef(pid, sid, "", int(number))
    match _segments(IMAGES, key):
        case [iid, "builds", number] if _is_number(number):
            ref = BuildRef("", "", iid, int(number))
    return ref


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit() and text == str(int(text))


def pod_spec_of(key: str) -> PodRef | None:
    """The inverse of :func:`pod_spec`; ``None`` for any other key."""
    match _segments(PODS, key):
        case [node_name, pod_id]:
            return PodRef(node_name, pod_id)
    return None
