"""The verification ladder at run time: check decisions, comparisons, the referee, stake gating."""
