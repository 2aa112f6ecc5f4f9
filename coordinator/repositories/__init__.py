"""Repositories: the SQL of one domain each (jobs, tasks, nodes, ledger, verification, training).

They take an Engine or the caller's Connection and import only the db layer, leaves and (in a
fixed order: jobs, nodes and the ledger first) each other; services compose them in one
transaction. `store.Store` builds them all on one engine.
"""
