"""The ledger's SQL: credits, epochs of earnings roots, proofs, slashes, and the chain outbox queue.

Each module takes the caller's Connection (to join its transaction) or an Engine.
"""
