"""The database layer: tables on one MetaData, the engine, and small SQL helpers.

A leaf: it imports nothing of the coordinator above it (only errors and config leaves).
"""
