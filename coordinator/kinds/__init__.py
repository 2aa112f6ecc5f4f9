"""Job kinds: one package per kind, each declaring its spec, planning, result checks, what
accepting a result does, assembly and report; `registry.py` lists them, one line each."""
