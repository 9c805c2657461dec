"""The etcd client on a 3-member cluster with TLS, while members are killed and frozen."""

from __future__ import annotations

import pytest

from tests.cluster.etcd_cluster import EtcdCluster
from tests.support import RawEtcd

pytestmark = [pytest.mark.etcd, pytest.mark.cluster]


async def test_cluster_elects_a_new_leader_after_a_kill_and_takes_its_member_back(
    etcd_cluster: EtcdCluster,
) -> None:
    async with RawEtcd(etcd_cluster.endpoints, tls=etcd_cluster.tls, timeout=5.0) as etcd:
        await etcd.put("/lastbackend/cluster/before", "1")
        leader = etcd_cluster.leader()
        etcd_cluster.kill(leader)
        assert etcd_cluster.leader() is not leader
        etcd_cluster.start(leader)
        assert (await etcd.get("/lastbackend/cluster/before")).value == b"1"
        assert etcd_cluster.status(leader) is not None
