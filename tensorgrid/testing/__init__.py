"""Tools for tests and benchmarks: a WAN-like TCP proxy, network namespaces, the architecture matrix."""
