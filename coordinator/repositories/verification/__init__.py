"""Verification's SQL: checks and their chains, checker draws, referee rulings, reputation."""
