"""Errors of the chain layer, all under tensorgrid's one root exception."""

from __future__ import annotations

from typing import Any

from tensorgrid.errors import TensorGridError


class ChainError(TensorGridError):
    """Talking to the chain failed: no RPC, a missing artifact, a failed deployment or tx."""


class ContractReverted(ChainError):
    """A contract call reverted; `error` is the Solidity custom error's name, `error_args` its decoded values.

    `error` is "" when the revert carried no decodable reason.
    """

    def __init__(self, error: str, args: tuple[Any, ...], message: str) -> None:
        super().__init__(message)
        self.error = error
        self.error_args = args
