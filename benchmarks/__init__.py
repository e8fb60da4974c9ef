"""Benchmarks for prisn (and etcd, as a reference): load generator, cluster helpers, scripts."""
