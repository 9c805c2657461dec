"""deploy/compose.yaml's etcd members run with the embedded etcd's compaction and quota.

Without auto-compaction a cluster's history grows until the backend quota stops every write;
the embedded etcd has had it from the start, and the compose file's cluster must too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lastbackend.store import embedded

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml"


def _etcd_members() -> dict[str, dict[str, Any]]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return {name: s for name, s in services.items() if s.get("entrypoint") == ["etcd"]}


def test_compose_has_a_three_member_cluster() -> None:
    assert sorted(_etcd_members()) == ["etcd1", "etcd2", "etcd3"]


def test_every_member_compacts_and_has_the_embedded_quota() -> None:
    for name, member in _etcd_members().items():
        env = member["environment"]
        assert env["ETCD_AUTO_COMPACTION_MODE"] == "revision", name
        assert int(env["ETCD_AUTO_COMPACTION_RETENTION"]) == embedded.AUTO_COMPACTION_RETENTION
        assert int(env["ETCD_QUOTA_BACKEND_BYTES"]) == embedded.QUOTA_BACKEND_BYTES
