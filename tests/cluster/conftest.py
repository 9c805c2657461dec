"""The 3-member etcd cluster with TLS: one per test module (starting one costs seconds)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.cluster.etcd_cluster import EtcdCluster


@pytest.fixture(scope="module")
def etcd_cluster_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    if shutil.which("etcd") is None or shutil.which("openssl") is None:
        pytest.skip("needs the etcd (Debian: etcd-server) and openssl binaries")
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-cluster"))
    cluster.start_all()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd_cluster(etcd_cluster_module: EtcdCluster) -> Iterator[EtcdCluster]:
    """The module's cluster, whole and healthy at the start of the test and again after it."""
    etcd_cluster_module.heal()
    yield etcd_cluster_module
    etcd_cluster_module.heal()
