"""Tests on a 3-member etcd cluster with TLS (``etcd_cluster.py``), broken on purpose."""
