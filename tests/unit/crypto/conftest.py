from __future__ import annotations

import os

import pytest

from tensorgrid.crypto import Signer
from tensorgrid.types import Domain, Receipt


def random_hex32() -> str:
    return os.urandom(32).hex()


def random_receipt(attempt: int = 0) -> Receipt:
    return Receipt(
        job_id=random_hex32(),
        task_id=random_hex32(),
        attempt=attempt,
        input_hash=random_hex32(),
        output_hash=random_hex32(),
        commitment=random_hex32(),
    )


@pytest.fixture
def domain() -> Domain:
    return Domain("TensorGrid", "1", 31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()
