"""Spec bytes and hashes pinned as the code before the spec layer produced them.

A spec's hash is signed by its submitter, recorded on chain and names its job: any change to
the canonical bytes of an existing spec breaks all three. These values were computed by the
code before tensorgrid.spec became a package and must never change.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tensorgrid.spec import (
    AdamW,
    InferenceSpec,
    JobSpecBase,
    NesterovSGD,
    NoopSpec,
    TrainingSpec,
    VerificationSpec,
    canonical_json,
    parse_spec,
    spec_hash,
)
from tensorgrid.types import BlobRef

A = BlobRef("ab" * 32, 10)
B = BlobRef("cd" * 32, 4096)
C = BlobRef("ef" * 32, 0)

BUILT: dict[str, Callable[[], JobSpecBase]] = {
    "noop_defaults": lambda: NoopSpec(tasks=3, nonce="n0"),
    "noop_custom": lambda: NoopSpec(
        tasks=1000,
        device="cuda",
        min_memory_bytes=1 << 30,
        task_memory_limit_bytes=2 << 30,
        task_time_limit_s=5,
        max_attempts=2,
        reward_per_task_wei=10**18,
        nonce="abc",
    ),
    "inference_defaults": lambda: InferenceSpec(model=A, inputs=B, nonce="n1"),
    "inference_custom": lambda: InferenceSpec(
        model=A,
        inputs=B,
        input_names=("x", "mask"),
        shard_rows=1024,
        batch_size=64,
        device="cpu",
        min_memory_bytes=5,
        task_memory_limit_bytes=1 << 31,
        task_time_limit_s=30,
        max_attempts=9,
        reward_per_task_wei=2**200,
        nonce="",
    ),
    "inference_verified": lambda: InferenceSpec(
        model=A,
        inputs=B,
        nonce="n2",
        verification=VerificationSpec(
            mode="replicate",
            target_detection=0.9,
            corrupt_fraction=0.05,
            spot_rows=7,
            trust_after=3,
            check_floor=0.25,
            canary_rate=0.0,
        ),
    ),
    "inference_default_policy": lambda: InferenceSpec(model=A, inputs=B, nonce="n3", verification=VerificationSpec()),
    "training_defaults": lambda: TrainingSpec(train_program=A, dataset=B, nonce="t0"),
    "training_custom": lambda: TrainingSpec(
        train_program=A,
        dataset=B,
        eval_program=C,
        initial_weights=A,
        loss="mse",
        inner_optimizer=AdamW(lr=0.003, betas=(0.8, 0.95), weight_decay=0.0, eps=1e-6),
        outer_optimizer=NesterovSGD(lr=1.0, momentum=0.5),
        rounds=3,
        inner_steps=7,
        workers_per_round=2,
        batch_size=32,
        eval_fraction=0.1,
        seed=42,
        compression="fp16",
        checkpoint_every=2,
        quorum=0.5,
        round_deadline_s=1200,
        device="cuda",
        min_memory_bytes=1,
        task_memory_limit_bytes=1 << 33,
        task_time_limit_s=100,
        max_attempts=3,
        reward_per_task_wei=123,
        nonce="t1",
    ),
    "training_verified": lambda: TrainingSpec(
        train_program=A, dataset=B, nonce="t2", verification=VerificationSpec(mode="none", check_floor=1.0)
    ),
}

# name -> (canonical bytes, sha256 spec hash), from the code before the spec layer
PINNED: dict[str, tuple[bytes, str]] = {
    "noop_defaults": (
        (
            b'{"device":"any","kind":"noop","max_attempts":5,"min_memory_bytes":0,"nonce":"n0","reward_p'
            b'er_task_wei":0,"task_memory_limit_bytes":1073741824,"task_time_limit_s":60,"tasks":3}'
        ),
        "d6186905d2760cf04e694abb790a9ef920c78b812a08a7d1b6fb2cac1d36aaae",
    ),
    "noop_custom": (
        (
            b'{"device":"cuda","kind":"noop","max_attempts":2,"min_memory_bytes":1073741824,"nonce":"abc'
            b'","reward_per_task_wei":1000000000000000000,"task_memory_limit_bytes":2147483648,"task_tim'
            b'e_limit_s":5,"tasks":1000}'
        ),
        "1d51c1a137e20cd94201ae0dd18405178a17893d648ed754bfb11acad8634f59",
    ),
    "inference_defaults": (
        (
            b'{"batch_size":0,"device":"any","input_names":[],"inputs":{"sha256":"cdcdcdcdcdcdcdcdcdcdcd'
            b'cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","size":4096},"kind":"inference","max_attempts"'
            b':5,"min_memory_bytes":0,"model":{"sha256":"abababababababababababababababababababababababa'
            b'babababababababab","size":10},"nonce":"n1","reward_per_task_wei":0,"shard_rows":256,"task_'
            b'memory_limit_bytes":4294967296,"task_time_limit_s":600}'
        ),
        "7354bf95ca551a6874a45e8385a0b55e089dd747851cd41fab504405cc812327",
    ),
    "inference_custom": (
        (
            b'{"batch_size":64,"device":"cpu","input_names":["x","mask"],"inputs":{"sha256":"cdcdcdcdcdc'
            b'dcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","size":4096},"kind":"inference","ma'
            b'x_attempts":9,"min_memory_bytes":5,"model":{"sha256":"abababababababababababababababababab'
            b'abababababababababababababab","size":10},"nonce":"","reward_per_task_wei":1606938044258990'
            b'275541962092341162602522202993782792835301376,"shard_rows":1024,"task_memory_limit_bytes":'
            b'2147483648,"task_time_limit_s":30}'
        ),
        "4023436d48098b4544624dbf092cf879ef878b8b7c9e97fb24cd1d61eb5f7c48",
    ),
    "inference_verified": (
        (
            b'{"batch_size":0,"device":"any","input_names":[],"inputs":{"sha256":"cdcdcdcdcdcdcdcdcdcdcd'
            b'cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","size":4096},"kind":"inference","max_attempts"'
            b':5,"min_memory_bytes":0,"model":{"sha256":"abababababababababababababababababababababababa'
            b'babababababababab","size":10},"nonce":"n2","reward_per_task_wei":0,"shard_rows":256,"task_'
            b'memory_limit_bytes":4294967296,"task_time_limit_s":600,"verification":{"canary_rate":0.0,"'
            b'check_floor":0.25,"corrupt_fraction":0.05,"mode":"replicate","spot_rows":7,"target_detecti'
            b'on":0.9,"trust_after":3}}'
        ),
        "79716a0ce36f83c3b90af926bd226482af44e4e42157ff796979734f428caa0d",
    ),
    "inference_default_policy": (
        (
            b'{"batch_size":0,"device":"any","input_names":[],"inputs":{"sha256":"cdcdcdcdcdcdcdcdcdcdcd'
            b'cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","size":4096},"kind":"inference","max_attempts"'
            b':5,"min_memory_bytes":0,"model":{"sha256":"abababababababababababababababababababababababa'
            b'babababababababab","size":10},"nonce":"n3","reward_per_task_wei":0,"shard_rows":256,"task_'
            b'memory_limit_bytes":4294967296,"task_time_limit_s":600,"verification":{"canary_rate":0.005'
            b',"check_floor":0.1,"corrupt_fraction":0.01,"mode":"spotcheck","spot_rows":0,"target_detect'
            b'ion":0.99,"trust_after":10}}'
        ),
        "ab0be826681cb00c48a56ecf31a6c03c13234f3be9cde0c9ce5d5177ac1ac466",
    ),
    "training_defaults": (
        (
            b'{"batch_size":16,"checkpoint_every":5,"compression":"int8","dataset":{"sha256":"cdcdcdcdcd'
            b'cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","size":4096},"device":"any","eval_'
            b'fraction":0.2,"eval_program":null,"initial_weights":null,"inner_optimizer":{"betas":[0.9,0'
            b'.999],"eps":1e-08,"lr":0.01,"name":"adamw","weight_decay":0.01},"inner_steps":20,"kind":"t'
            b'raining","loss":"cross_entropy","max_attempts":5,"min_memory_bytes":0,"nonce":"t0","outer_'
            b'optimizer":{"lr":0.7,"momentum":0.8,"name":"nesterov"},"quorum":0.75,"reward_per_task_wei"'
            b':0,"round_deadline_s":900,"rounds":15,"seed":0,"task_memory_limit_bytes":4294967296,"task_'
            b'time_limit_s":600,"train_program":{"sha256":"ababababababababababababababababababababababa'
            b'bababababababababab","size":10},"workers_per_round":4}'
        ),
        "f354bd17e3f4635519a8e332818271be86619989e8d0ebc17e3f5f6e0cccb5bc",
    ),
    "training_custom": (
        (
            b'{"batch_size":32,"checkpoint_every":2,"compression":"fp16","dataset":{"sha256":"cdcdcdcdcd'
            b'cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","size":4096},"device":"cuda","eval'
            b'_fraction":0.1,"eval_program":{"sha256":"efefefefefefefefefefefefefefefefefefefefefefefefe'
            b'fefefefefefefef","size":0},"initial_weights":{"sha256":"ababababababababababababababababab'
            b'ababababababababababababababab","size":10},"inner_optimizer":{"betas":[0.8,0.95],"eps":1e-'
            b'06,"lr":0.003,"name":"adamw","weight_decay":0.0},"inner_steps":7,"kind":"training","loss":'
            b'"mse","max_attempts":3,"min_memory_bytes":1,"nonce":"t1","outer_optimizer":{"lr":1.0,"mome'
            b'ntum":0.5,"name":"nesterov"},"quorum":0.5,"reward_per_task_wei":123,"round_deadline_s":120'
            b'0,"rounds":3,"seed":42,"task_memory_limit_bytes":8589934592,"task_time_limit_s":100,"train'
            b'_program":{"sha256":"abababababababababababababababababababababababababababababababab","si'
            b'ze":10},"workers_per_round":2}'
        ),
        "0d226af27a7ffca9cc7ae8479994823a0e814b20beb28c5f81fb5cfc2e42f5a9",
    ),
    "training_verified": (
        (
            b'{"batch_size":16,"checkpoint_every":5,"compression":"int8","dataset":{"sha256":"cdcdcdcdcd'
            b'cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","size":4096},"device":"any","eval_'
            b'fraction":0.2,"eval_program":null,"initial_weights":null,"inner_optimizer":{"betas":[0.9,0'
            b'.999],"eps":1e-08,"lr":0.01,"name":"adamw","weight_decay":0.01},"inner_steps":20,"kind":"t'
            b'raining","loss":"cross_entropy","max_attempts":5,"min_memory_bytes":0,"nonce":"t2","outer_'
            b'optimizer":{"lr":0.7,"momentum":0.8,"name":"nesterov"},"quorum":0.75,"reward_per_task_wei"'
            b':0,"round_deadline_s":900,"rounds":15,"seed":0,"task_memory_limit_bytes":4294967296,"task_'
            b'time_limit_s":600,"train_program":{"sha256":"ababababababababababababababababababababababa'
            b'bababababababababab","size":10},"verification":{"canary_rate":0.005,"check_floor":1.0,"cor'
            b'rupt_fraction":0.01,"mode":"none","spot_rows":0,"target_detection":0.99,"trust_after":10},'
            b'"workers_per_round":4}'
        ),
        "21c47c35c940027699e1f2675f6585eda8a79a416411fbcd2cd73049f8f33273",
    ),
}

# name -> (JSON as a submitter might write it, its canonical bytes, their hash)
PARSED: dict[str, tuple[str, bytes, str]] = {
    "noop_parsed": (
        ('{"kind": "noop", "tasks": 2, "nonce": "p0"}'),
        (
            b'{"device":"any","kind":"noop","max_attempts":5,"min_memory_bytes":0,"nonce":"p0","reward_p'
            b'er_task_wei":0,"task_memory_limit_bytes":1073741824,"task_time_limit_s":60,"tasks":2}'
        ),
        "61acbcbddc319309d103230af44e5cc77fb13be4e7cae62e6e09af011b3e9070",
    ),
    "inference_parsed": (
        (
            '{"kind": "inference", "model": {"sha256": "abababababababababababababababababababababababa'
            'babababababababab", "size": 10}, "inputs": {"sha256": "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdc'
            'dcdcdcdcdcdcdcdcdcdcdcdcdcdcd", "size": 4096}, "nonce": "p1", "input_names": ["b", "a"], "'
            'verification": {"target_detection": 0.5, "check_floor": 1}}'
        ),
        (
            b'{"batch_size":0,"device":"any","input_names":["b","a"],"inputs":{"sha256":"cdcdcdcdcdcdcdc'
            b'dcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","size":4096},"kind":"inference","max_at'
            b'tempts":5,"min_memory_bytes":0,"model":{"sha256":"abababababababababababababababababababab'
            b'abababababababababababab","size":10},"nonce":"p1","reward_per_task_wei":0,"shard_rows":256'
            b',"task_memory_limit_bytes":4294967296,"task_time_limit_s":600,"verification":{"canary_rate'
            b'":0.005,"check_floor":1,"corrupt_fraction":0.01,"mode":"spotcheck","spot_rows":0,"target_d'
            b'etection":0.5,"trust_after":10}}'
        ),
        "c515a0974873276656fc27cf820be8c3f850ac5b4020bbd9ae095bf63b43a00b",
    ),
    "training_parsed": (
        (
            '{"kind": "training", "train_program": {"sha256": "abababababababababababababababababababab'
            'abababababababababababab", "size": 10}, "dataset": {"sha256": "cdcdcdcdcdcdcdcdcdcdcdcdcdc'
            'dcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd", "size": 4096}, "eval_program": null, "nonce": "p2"'
            ', "quorum": 1, "eval_fraction": 0, "inner_optimizer": {"lr": 1, "betas": [0.5, 0.25]}, "ou'
            'ter_optimizer": {"name": "nesterov", "momentum": 0}, "verification": null}'
        ),
        (
            b'{"batch_size":16,"checkpoint_every":5,"compression":"int8","dataset":{"sha256":"cdcdcdcdcd'
            b'cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","size":4096},"device":"any","eval_'
            b'fraction":0.0,"eval_program":null,"initial_weights":null,"inner_optimizer":{"betas":[0.5,0'
            b'.25],"eps":1e-08,"lr":1.0,"name":"adamw","weight_decay":0.01},"inner_steps":20,"kind":"tra'
            b'ining","loss":"cross_entropy","max_attempts":5,"min_memory_bytes":0,"nonce":"p2","outer_op'
            b'timizer":{"lr":0.7,"momentum":0.0,"name":"nesterov"},"quorum":1.0,"reward_per_task_wei":0,'
            b'"round_deadline_s":900,"rounds":15,"seed":0,"task_memory_limit_bytes":4294967296,"task_tim'
            b'e_limit_s":600,"train_program":{"sha256":"abababababababababababababababababababababababab'
            b'abababababababab","size":10},"workers_per_round":4}'
        ),
        "13288a2aa85d87d1cf6430a834bd79a68916126f4af008e94925fa06461fe0b7",
    ),
}


@pytest.mark.parametrize("name", sorted(BUILT))
def test_built_specs_keep_their_bytes_and_hash(name: str) -> None:
    raw, digest = PINNED[name]
    spec = BUILT[name]()
    assert canonical_json(spec) == raw
    assert spec_hash(canonical_json(spec)) == digest
    again = parse_spec(raw)
    assert again == spec and canonical_json(again) == raw


@pytest.mark.parametrize("name", sorted(PARSED))
def test_parsed_specs_keep_their_bytes_and_hash(name: str) -> None:
    source, raw, digest = PARSED[name]
    spec = parse_spec(source.encode())
    assert canonical_json(spec) == raw
    assert spec_hash(raw) == digest


def test_every_kind_is_pinned() -> None:
    kinds = {json.loads(raw)["kind"] for raw, _ in PINNED.values()}
    assert kinds == {"noop", "inference", "training"}
