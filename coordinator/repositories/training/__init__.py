"""Training's SQL: where each job's open round stands, closing rounds, and result audits."""
