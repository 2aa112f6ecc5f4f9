"""Thin gRPC servicers: authenticate, call the runtime, map failures to statuses."""
