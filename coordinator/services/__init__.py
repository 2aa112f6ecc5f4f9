"""Services: the coordinator's behaviour over its repositories (scheduling, accepting results,
verification, training rounds, the ledger's runtime, aggregation, intake). They take a small
Runtime (database executor, work pool, clock, event hub), never the whole coordinator."""
