"""Repositories: the SQL of one domain each (jobs, tasks, nodes, ledger, verification, training).

They take an Engine or the caller's Connection and import only the db layer, the leaves and
each other in one order (ledger, jobs, nodes, tasks, results, verification, training; checked
by tests/unit/test_architecture.py); services compose them in one transaction.
`store.Store` builds them all on one engine.
"""
