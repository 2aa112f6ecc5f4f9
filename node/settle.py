"""A node's money: stake on NodeRegistry, see earnings, claim them from Settlement."""

from __future__ import annotations

import logging
from typing import Any

from tensorgrid import exitcodes
from tensorgrid.client import Client
from tensorgrid.errors import TensorGridError
from tensorgrid.tls import ClientTls

log = logging.getLogger("tensorgrid.node")
WEI_PER_ETH = 10**18


def eth(wei: int) -> str:
    return f"{wei / WEI_PER_ETH:.6f} ETH ({wei} wei)"


def ensure_staked(chain: Any, stake_wei: int = 0) -> None:
    """Register with max(stake_wei, minimum stake) unless this key is already an active node."""
    if chain.is_active(chain.address):
        log.info("staked on chain: %s", eth(chain.stake_of(chain.address)))
        return
    stake = max(stake_wei, chain.deployment.min_stake)
    info = chain.node_info(chain.address)
    if info.registered:
        result = chain.add_stake(stake - info.stake) if stake > info.stake else None
    else:
        result = chain.register(stake)
    if result is not None:
        log.info("staked %s on NodeRegistry %s (tx %s)", eth(stake), chain.deployment.node_registry, result.tx_hash)


def earnings_of(coordinator: str, address: str, tls: ClientTls | None) -> Any:
    """The coordinator's record of what `address` earned (GetEarnings: public, no session)."""
    tls = tls or ClientTls()
    with Client(coordinator, ca_cert=tls.ca_cert, insecure=tls.insecure) as client:
        return client.earnings(address)


def show_earnings(coordinator: str, address: str, chain: Any | None, tls: ClientTls | None = None) -> int:
    e = earnings_of(coordinator, address, tls)
    print(f"node      {address}\nearned    {eth(e.cumulative_wei)}\nunposted  {eth(e.pending_wei)}")
    if e.claim_epoch:
        print(f"claimable {eth(e.claim_cumulative_wei)} cumulative, in epoch {e.claim_epoch}")
    if e.slashed_wei:
        print(f"slashed   {eth(e.slashed_wei)} of stake, for results proven wrong")
    if chain is not None:
        print(f"claimed   {eth(chain.claimed(address))}\nstake     {eth(chain.stake_of(address))}")
    return exitcodes.OK


def claim(coordinator: str, chain: Any, tls: ClientTls | None = None) -> int:
    """Claim everything posted so far (claims are cumulative: one claim covers all past epochs)."""
    e = earnings_of(coordinator, chain.address, tls)
    if not e.claim_epoch:
        if e.cumulative_wei == 0:
            print("nothing to claim: this node has not been paid for any verified task yet")
            return exitcodes.OK
        raise TensorGridError(
            f"earned {eth(e.cumulative_wei)}, not posted on chain yet: earnings are posted once per epoch"
        )
    already = chain.claimed(chain.address)
    if e.claim_cumulative_wei <= already:
        print(f"nothing new to claim: {eth(already)} already claimed")
        return exitcodes.OK
    result = chain.claim(e.claim_cumulative_wei, e.claim_proof)
    print(f"claimed {eth(e.claim_cumulative_wei - already)} (tx {result.tx_hash}, gas {result.gas_used})")
    return exitcodes.OK
