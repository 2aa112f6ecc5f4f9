"""The verification ladder beyond identity and integrity: spot-checks, adaptive replication
with a quorum for disputes, canaries, and the stake each job's policy requires.

`manager.Verification` (the runtime part) is imported from its module: storage imports
`records`, and the manager imports storage.
"""

from coordinator.verification.policy import VerificationPolicy, required_stake

__all__ = ["VerificationPolicy", "required_stake"]
