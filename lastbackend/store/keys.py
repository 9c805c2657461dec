"""The /lastbackend key tree: the only module that spells an etcd path.

Every key an admin sees with ``etcdctl get --prefix /lastbackend`` is built here, so the layout
documented in the README and in seed 001 has exactly one implementation. Callers pass ids and
names that the model has already validated (UUIDs and DNS labels), so no segment can contain a
``/`` and escape its place in the tree.

Prefixes end with ``/`` on purpose: a range or delete over ``projects/<pid>/`` can never touch
``projects/<pid>2/``.
"""

from __future__ import annotations

ROOT = "/lastbackend/"

SERVICE_PARTS = ("meta", "config", "source", "domains", "image")
"""The single-value keys of a service, in the order the API composes them."""


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
    if part not in SERVICE_PARTS:
        raise ValueError(f"unknown service part {part!r}")
    return f"{service(pid, sid)}{part}"


def containers(pid: str, sid: str) -> str:
    return f"{service(pid, sid)}containers/"


def container(pid: str, sid: str, container_id: str) -> str:
    return f"{containers(pid, sid)}{container_id}"


def builds(pid: str, sid: str) -> str:
    return f"{service(pid, sid)}builds/"


def build(pid: str, sid: str, number: int) -> str:
    return f"{builds(pid, sid)}{number}"


# helpers: name -> id indexes --------------------------------------------------------------------

HELPER = f"{ROOT}helper/"
HELPER_PROJECTS = f"{HELPER}projects/"


def project_name(name: str) -> str:
    """``helper/projects/<name>`` -> project id."""
    return f"{HELPER_PROJECTS}{name}"


def service_names(pid: str) -> str:
    """The project's service-name index (with its trailing slash)."""
    return f"{HELPER_PROJECTS}{pid}/services/"


def service_name(pid: str, name: str) -> str:
    """``helper/projects/<pid>/services/<name>`` -> service id."""
    return f"{service_names(pid)}{name}"


def project_helpers(pid: str) -> str:
    """Every helper key owned by a project, except its own name key."""
    return f"{HELPER_PROJECTS}{pid}/"


HELPER_PODS = f"{HELPER}pods/"


def pod(pod_id: str) -> str:
    """``helper/pods/<pod id>`` -> ``<pid>:<sid>``."""
    return f"{HELPER_PODS}{pod_id}"


def is_project_name_key(key: str) -> bool:
    """True for ``helper/projects/<name>``, False for the ``<pid>/services/...`` beside it."""
    return key.startswith(HELPER_PROJECTS) and "/" not in key[len(HELPER_PROJECTS) :]


def leaf(key: str) -> str:
    """The last segment of a key: a name in an index, an id in a collection."""
    return key.rsplit("/", 1)[-1]


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


LEADERS = f"{ROOT}system/leader/"


def leader(controller: str) -> str:
    """``system/leader/<controller>``: the election key of one controller, on the leader's lease."""
    return f"{LEADERS}{controller}"
