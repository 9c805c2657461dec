"""The route table and the Caddy config built from it: pure functions, no servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lastbackend.codec import format_instant
from lastbackend.model import hosts
from lastbackend.router import caddy, table
from lastbackend.store import keys

PID, SID, OTHER = "p-1", "s-1", "s-2"
DOMAIN = "lb.localhost"
AT = datetime(2026, 12, 2, 10, 0, 0, 500000, tzinfo=UTC)


def meta(name: str) -> bytes:
    return json.dumps({"name": name}).encode()


def tree(**extra: bytes) -> dict[str, bytes]:
    """One project ``demo`` with a service ``web`` on 8080 and two running containers."""
    raw = {
        keys.project_meta(PID): meta("demo"),
        keys.service_part(PID, SID, "meta"): meta("web"),
        keys.service_part(PID, SID, "config"): json.dumps(
            {"ports": {"9090/TCP": 0, "8080/TCP": 0, "53/UDP": 0}}
        ).encode(),
        keys.service_part(PID, SID, "domains"): json.dumps(
            {"www.example.com": True, "old.example.com": False, "*.example.com": True}
        ).encode(),
        keys.container(PID, SID, "c1"): json.dumps(
            {"id": "c1", "status": "running", "node": "n1", "ports": {"8080/TCP": 32001}}
        ).encode(),
        keys.container(PID, SID, "c2"): json.dumps(
            {"id": "c2", "status": "running", "node": "n2", "ports": {"8080/TCP": 32002}}
        ).encode(),
        keys.container(PID, SID, "c3"): json.dumps(
            {"id": "c3", "status": "exited", "node": "n1", "ports": {}}
        ).encode(),
        keys.container(PID, SID, "c4"): json.dumps(
            {"id": "c4", "status": "running", "node": "gone", "ports": {"8080/TCP": 32004}}
        ).encode(),
        keys.container(PID, SID, "c5"): json.dumps(
            {
                "id": "c5",
                "status": "running",
                "node": "lost",
                "host": "10.0.0.9",
                "ports": {"8080/TCP": 32005},
            }
        ).encode(),
        keys.container(PID, SID, "c6"): json.dumps(
            {
                "id": "c6",
                "status": "running",
                "ready": False,
                "node": "n1",
                "ports": {"8080/TCP": 32006},
            }
        ).encode(),
    }
    raw.update(extra)
    return raw


NODES = {
    keys.node("n1"): json.dumps({"address": "http://10.0.0.1:2967"}).encode(),
    keys.node("n2"): json.dumps({"address": ""}).encode(),
}


def test_hosts_upstreams_and_order() -> None:
    routes = table.build(tree(), NODES, DOMAIN, AT)
    assert [r.host for r in routes] == ["web.demo.lb.localhost", "www.example.com", "*.example.com"]
    upstreams = {u.dial for u in routes[0].upstreams}
    # the web port is the lowest TCP port; exited, not ready and unknown-node containers are
    # left out; a node with no address is dialled on loopback; a lost node (key gone, within
    # its eviction grace) is dialled at the host its container objects carry
    assert upstreams == {"10.0.0.1:32001", "127.0.0.1:32002", "10.0.0.9:32005"}
    assert all(r.upstreams == routes[0].upstreams for r in routes)


def ready(cid: str, since: datetime, port: int) -> bytes:
    return json.dumps(
        {
            "id": cid,
            "status": "running",
            "ready": True,
            "ready_since": format_instant(since),
            "node": "n1",
            "ports": {"8080/TCP": port},
        }
    ).encode()


def warm_tree(*containers: tuple[str, float], min_ready: int | None = None) -> dict[str, bytes]:
    """``web`` with only the given ready containers, each ready for that many seconds at AT."""
    raw = {k: v for k, v in tree().items() if keys.container_of(k) is None}
    config: dict[str, Any] = {"ports": {"8080/TCP": 0}}
    if min_ready is not None:
        config["min_ready"] = min_ready
    raw[keys.service_part(PID, SID, "config")] = json.dumps(config).encode()
    for n, (cid, age) in enumerate(containers):
        raw[keys.container(PID, SID, cid)] = ready(cid, AT - timedelta(seconds=age), 33000 + n)
    return raw


def dials(raw: dict[str, bytes], at: datetime = AT) -> set[str]:
    return {u.container for u in table.build(raw, NODES, DOMAIN, at)[0].upstreams}


def test_containers_still_warming_up_get_no_traffic_while_proven_ones_serve() -> None:
    # a rolling deploy: two old containers ready for minutes, a new one ready for a second.
    # The new one could be a bad deploy that passes its check and dies: it waits out min_ready.
    raw = warm_tree(("old1", 600), ("old2", 600), ("new", 1))
    assert dials(raw) == {"old1", "old2"}
    # the table changes by the clock alone at the end of the new container's warm-up, to the
    # millisecond (ready_since is an Instant): 10:00:00.5 - 1 s + 3 s
    warm = datetime(2026, 12, 2, 10, 0, 2, 500000, tzinfo=UTC)
    assert table.warms_at(raw, AT) == warm
    assert dials(raw, warm - timedelta(milliseconds=1)) == {"old1", "old2"}
    assert dials(raw, warm) == {"old1", "old2", "new"}
    # the service's own min_ready decides
    assert dials(warm_tree(("old", 600), ("new", 1), min_ready=0)) == {"old", "new"}
    assert dials(warm_tree(("old", 600), ("new", 30), min_ready=60)) == {"old"}


def test_with_no_proven_container_every_ready_one_serves_at_once() -> None:
    # a first deploy (or a scale up from nothing) has nothing to protect: no warm-up wait
    assert dials(warm_tree(("a", 0), ("b", 1))) == {"a", "b"}
    assert table.warms_at(warm_tree(("a", 600)), AT) is None


def test_what_is_not_routed() -> None:
    no_port = tree(**{keys.service_part(PID, SID, "config"): b'{"ports": {"53/UDP": 0}}'})
    assert table.build(no_port, NODES, DOMAIN, AT) == []
    broken = tree(**{keys.service_part(PID, SID, "config"): b"not json"})
    assert table.build(broken, NODES, DOMAIN, AT) == []
    orphan = {k: v for k, v in tree().items() if k != keys.project_meta(PID)}
    assert table.build(orphan, NODES, DOMAIN, AT) == []


def test_urls_leave_wildcards_and_held_hosts_out_and_drop_default_ports() -> None:
    found = hosts.urls(
        "web",
        "demo",
        ["8080/TCP"],
        {"www.example.com": True, "old.example.com": False, "*.example.com": True},
        domain="apps.example.org",
        http=80,
        https=443,
    )
    assert found == [
        "http://web.demo.apps.example.org/",
        "https://web.demo.apps.example.org/",
        "http://www.example.com/",
        "https://www.example.com/",
    ]
    assert hosts.urls("w", "d", ["53/UDP"], {}, domain="x.org", http=80, https=443) == []


def config(tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    routes = table.build(tree(), NODES, DOMAIN, AT)
    return caddy.config(
        routes,
        http="127.0.0.1:8080",
        https="127.0.0.1:8443",
        paths=caddy.Paths(tmp_path),
        **kwargs,
    )


def test_the_config_routes_every_host_then_answers_404(tmp_path: Path) -> None:
    document = config(tmp_path)
    servers = document["apps"]["http"]["servers"]
    assert servers["http"]["listen"] == ["127.0.0.1:8080"]
    assert servers["https"]["listen"] == ["127.0.0.1:8443"]
    assert servers["https"]["tls_connection_policies"] == [{}]
    assert "tls_connection_policies" not in servers["http"]
    routes = servers["http"]["routes"]
    assert routes == servers["https"]["routes"]
    assert [r.get("match", [{}])[0].get("host") for r in routes] == [
        ["web.demo.lb.localhost"],
        ["www.example.com"],
        ["*.example.com"],
        None,  # the catch-all
    ]
    proxy = routes[0]["handle"][1]
    assert proxy["handler"] == "reverse_proxy"
    assert "flush_interval" not in proxy  # see router/caddy.py: it breaks loads under traffic
    assert routes[-1]["handle"][0]["status_code"] == 404
    assert document["admin"]["listen"] == f"unix/{tmp_path / 'admin.sock'}"
    ca = document["apps"]["pki"]["certificate_authorities"]["local"]
    assert ca["install_trust"] is False
    assert ca["root"]["certificate"] == str(tmp_path / "ca" / "root.crt")


def test_certificates_internal_by_default_users_own_and_acme_for_public_hosts(
    tmp_path: Path,
) -> None:
    internal = config(tmp_path)["apps"]["tls"]
    assert internal["automation"]["policies"] == [{"issuers": [{"module": "internal"}]}]
    assert internal["certificates"]["automate"] == [
        "*.example.com",
        "web.demo.lb.localhost",
        "www.example.com",
    ]

    own = caddy.Certificate("www.example.com", "CHAIN", "KEY")
    acme = config(tmp_path, certificates=[own], acme_email="ops@example.com")["apps"]["tls"]
    assert acme["certificates"]["load_pem"] == [
        {"certificate": "CHAIN", "key": "KEY", "tags": ["lastbackend:www.example.com"]}
    ]
    assert "www.example.com" not in acme["certificates"]["automate"]
    assert acme["automation"]["policies"] == [
        {  # public names from ACME; *.localhost can never have a public certificate
            "subjects": ["*.example.com"],
            "issuers": [{"module": "acme", "email": "ops@example.com"}],
        },
        {"issuers": [{"module": "internal"}]},
    ]
    assert not caddy.public("web.demo.lb.localhost")
    assert not caddy.public("localhost")
    assert caddy.public("shop.example.com")
    assert "KEY" not in repr(own)
