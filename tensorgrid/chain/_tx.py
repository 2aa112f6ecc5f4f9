"""Signing and sending transactions from one local key; decoding custom-error reverts.

Private: the public surface is ChainClient and deploy(). Each transaction is built
(which estimates gas, so a revert surfaces here with its reason before anything is
sent), signed locally, sent raw, and awaited until mined. Nonces come from the node's
pending count: enough for one writer per key. The coordinator's persistent outbox owns
nonces and retries above this layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_account import Account
from eth_hash.auto import keccak
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted

from tensorgrid.chain.errors import ChainError, ContractReverted


@dataclass(frozen=True)
class TxResult:
    """A mined, successful transaction."""

    tx_hash: str
    block: int
    gas_used: int
    fee: int  # wei paid for gas: gas_used * effectiveGasPrice
    contract_address: str | None = None


def _canonical_type(item: dict[str, Any]) -> str:
    if item["type"].startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in item["components"])
        return f"({inner}){item['type'][5:]}"
    return str(item["type"])


class ErrorDecoder:
    """Maps a revert's 4-byte selector to the custom error in a set of ABIs."""

    def __init__(self, *abis: list[dict[str, Any]]) -> None:
        self._errors: dict[bytes, tuple[str, list[str]]] = {}
        for abi in abis:
            for item in abi:
                if item.get("type") == "error":
                    types = [_canonical_type(i) for i in item["inputs"]]
                    selector = keccak(f"{item['name']}({','.join(types)})".encode())[:4]
                    self._errors[selector] = (item["name"], types)

    def from_exception(self, exc: ContractLogicError, action: str) -> ContractReverted:
        data = exc.data if isinstance(exc.data, str) else None
        if data and data.startswith("0x") and len(data) >= 10:
            raw = bytes.fromhex(data[2:])
            known = self._errors.get(raw[:4])
            if known is not None:
                name, types = known
                try:
                    args = tuple(abi_decode(types, raw[4:]))
                except Exception:  # malformed revert data: keep the name, drop the values
                    args = ()
                return ContractReverted(name, args, f"{action} reverted: {name}{args!r}")
        reason = exc.message or str(exc)
        return ContractReverted("", (), f"{action} reverted: {reason}")


class Transactor:
    """Sends transactions signed by one private key through `w3`."""

    def __init__(self, w3: Web3, private_key: str | bytes, decoder: ErrorDecoder, *, timeout: float = 120.0):
        self.w3 = w3
        self._account = Account.from_key(private_key)
        self.address: str = self._account.address
        self._decoder = decoder
        self._timeout = timeout
        self._chain_id: int | None = None

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def build_signed(self, call: Any, action: str, *, nonce: int, value: int = 0) -> tuple[bytes, str]:
        """Build and sign `call` with an explicit `nonce` without sending it: (raw tx, 0x hash).

        Gas is estimated here, so a call that would revert raises ContractReverted and
        nothing is signed. For a caller that persists the raw tx before broadcasting it
        (the coordinator's outbox) and owns the nonces.
        """
        params: dict[str, Any] = {"from": self.address, "value": value, "chainId": self.chain_id, "nonce": nonce}
        try:
            tx = call.build_transaction(params)
        except ContractLogicError as exc:
            raise self._decoder.from_exception(exc, action) from None
        signed = self._account.sign_transaction(tx)
        return bytes(signed.raw_transaction), signed.hash.to_0x_hex()

    def decode_revert(self, exc: ContractLogicError, action: str) -> ContractReverted:
        """The custom error carried by a revert, as ContractReverted."""
        return self._decoder.from_exception(exc, action)

    def send(self, call: Any, action: str, value: int = 0) -> TxResult:
        """Build, sign and send `call` (a bound contract function or constructor); wait for it."""
        params: dict[str, Any] = {
            "from": self.address,
            "value": value,
            "chainId": self.chain_id,
            "nonce": self.w3.eth.get_transaction_count(self.address, "pending"),  # type: ignore[arg-type]
        }
        try:
            tx = call.build_transaction(params)
        except ContractLogicError as exc:
            raise self._decoder.from_exception(exc, action) from None
        signed = self._account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self._timeout, poll_latency=0.05)
        except TimeExhausted:
            raise ChainError(f"{action}: tx {tx_hash.to_0x_hex()} not mined within {self._timeout} s") from None
        if receipt["status"] != 1:
            raise ChainError(f"{action}: tx {tx_hash.to_0x_hex()} was mined but reverted")
        address = receipt.get("contractAddress")
        return TxResult(
            tx_hash=tx_hash.to_0x_hex(),
            block=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
            fee=int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"]),
            contract_address=str(address) if address else None,
        )
