"""`tensorgrid job submit` and `submit-training` take every default from the spec layer."""

from __future__ import annotations

import argparse

import pytest

from tensorgrid import cli, cli_training, config
from tensorgrid.spec import AdamW, GiB, InferenceSpec, NesterovSGD, TrainingSpec, VerificationSpec, canonical_json
from tensorgrid.types import BlobRef

REF = BlobRef("ab" * 32, 1)


def parse(*argv: str) -> argparse.Namespace:
    return config.parse_args(cli.build_parser(), list(argv), cli.SETTINGS, env={})


def test_submit_defaults_are_the_spec_defaults() -> None:
    ns = parse("job", "submit", "--model", "m.pt2", "--inputs", "x.safetensors")
    spec = InferenceSpec(model=REF, inputs=REF, nonce="n", **cli.inference_settings(ns))
    assert spec == InferenceSpec(model=REF, inputs=REF, nonce="n", verification=VerificationSpec())
    # The bytes the command signed when it spelled its defaults out itself.
    before = InferenceSpec(
        model=REF,
        inputs=REF,
        nonce="n",
        input_names=(),
        shard_rows=256,
        batch_size=0,
        device="any",
        task_time_limit_s=600,
        task_memory_limit_bytes=4 * GiB,
        reward_per_task_wei=0,
        verification=VerificationSpec(mode="spotcheck", target_detection=0.99),
    )
    assert canonical_json(spec) == canonical_json(before)


def test_submit_flags_reach_the_spec() -> None:
    ns = parse(
        "job", "submit", "--model", "m", "--inputs", "x", "--input-name", "b", "--input-name", "a",
        "--shard-rows", "7", "--batch-size", "3", "--device", "cpu", "--time-limit", "9",
        "--memory-limit-gib", "0.5", "--reward-wei", "11", "--verification", "replicate", "--target-detection", "0.5",
    )  # fmt: skip
    assert cli.inference_settings(ns) == {
        "input_names": ("b", "a"),
        "shard_rows": 7,
        "batch_size": 3,
        "device": "cpu",
        "task_time_limit_s": 9,
        "task_memory_limit_bytes": GiB // 2,
        "reward_per_task_wei": 11,
        "verification": VerificationSpec(mode="replicate", target_detection=0.5),
    }


def test_submit_training_defaults_are_the_spec_defaults() -> None:
    ns = parse("job", "submit-training", "--program", "p.pt2", "--dataset", "d.safetensors")
    assert cli_training.training_settings(ns) == {}
    assert TrainingSpec(
        train_program=REF, dataset=REF, nonce="n", **cli_training.training_settings(ns)
    ) == TrainingSpec(train_program=REF, dataset=REF, nonce="n")


def test_submit_training_flags_reach_the_spec() -> None:
    ns = parse(
        "job", "submit-training", "--program", "p", "--dataset", "d", "--rounds", "3", "--inner-steps", "4",
        "--workers", "2", "--batch-size", "8", "--lr", "0.1", "--outer-momentum", "0.5", "--quorum", "0.5",
        "--round-deadline", "60", "--eval-fraction", "0.1", "--seed", "5", "--time-limit", "30", "--loss", "mse",
        "--compression", "fp16", "--device", "cpu", "--checkpoint-every", "2", "--max-attempts", "3",
        "--reward-wei", "12", "--verification", "replicate", "--warmup-steps", "5", "--final-lr", "0.01",
        "--outer-plain-rounds", "4",
    )  # fmt: skip
    assert cli_training.training_settings(ns) == {
        "rounds": 3,
        "inner_steps": 4,
        "workers_per_round": 2,
        "batch_size": 8,
        "inner_optimizer": AdamW(lr=0.1),
        "outer_optimizer": NesterovSGD(momentum=0.5),
        "quorum": 0.5,
        "round_deadline_s": 60,
        "eval_fraction": 0.1,
        "seed": 5,
        "task_time_limit_s": 30,
        "loss": "mse",
        "compression": "fp16",
        "device": "cpu",
        "checkpoint_every": 2,
        "max_attempts": 3,
        "reward_per_task_wei": 12,
        "verification": VerificationSpec(mode="replicate"),
        "inner_warmup_steps": 5,
        "inner_final_lr": 0.01,
        "outer_plain_rounds": 4,
    }


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("command", "flag", "default"),
    [
        ("submit", "--shard-rows", InferenceSpec.shard_rows),
        ("submit", "--time-limit", InferenceSpec.task_time_limit_s),
        ("submit", "--target-detection", VerificationSpec.target_detection),
        ("submit-training", "--rounds", TrainingSpec.rounds),
        ("submit-training", "--lr", AdamW.lr),
        ("submit-training", "--outer-momentum", NesterovSGD.momentum),
    ],
)
def test_help_shows_the_spec_defaults(command: str, flag: str, default: object) -> None:
    parser = subparser(subparser(cli.build_parser(), "job"), command)
    action = next(a for a in parser._actions if flag in a.option_strings)
    assert f"(default: {default})" in (action.help or "")


def test_submit_training_help_shows_every_default() -> None:
    """Each option of submit-training says what happens when it is left out (booleans and -h aside)."""
    parser = subparser(subparser(cli.build_parser(), "job"), "submit-training")
    silent = [
        a.option_strings[0]
        for a in parser._actions
        if a.option_strings and a.nargs != 0 and "(default:" not in (a.help or "") and not a.required
    ]
    assert silent == []
    shown = {a.option_strings[0]: a.help or "" for a in parser._actions if a.option_strings}
    assert f"(default: {TrainingSpec.reward_per_task_wei})" in shown["--reward-wei"]
    assert f"(default: {TrainingSpec.checkpoint_every})" in shown["--checkpoint-every"]
    assert f"(default: {VerificationSpec.mode})" in shown["--verification"]


def test_endpoint_create_defaults_are_the_spec_defaults() -> None:
    from tensorgrid import cli_endpoint
    from tensorgrid.spec import EndpointSpec

    ns = parse("endpoint", "create", "--model", "m.pt2")
    assert EndpointSpec(model=REF, nonce="n", **cli_endpoint.endpoint_fields(ns)) == EndpointSpec(model=REF, nonce="n")


def test_endpoint_create_flags_reach_the_spec() -> None:
    from tensorgrid import cli_endpoint

    ns = parse(
        "endpoint", "create", "--model", "m", "--serves", "generation", "--vocab-size", "32", "--min-replicas", "2",
        "--max-replicas", "3", "--max-batch", "8", "--max-delay-us", "500", "--price-wei", "7", "--max-requests", "9",
        "--check-rate", "0.5", "--stop-token", "1", "--stop-token", "2", "--device", "cpu",
    )  # fmt: skip
    assert cli_endpoint.endpoint_fields(ns) == {
        "serves": "generation",
        "vocab_size": 32,
        "min_replicas": 2,
        "max_replicas": 3,
        "max_batch": 8,
        "max_delay_us": 500,
        "reward_per_task_wei": 7,
        "max_requests": 9,
        "check_rate": 0.5,
        "stop_tokens": (1, 2),
        "device": "cpu",
    }


def test_endpoint_replicas_sets_both_bounds_and_refuses_a_contradiction() -> None:
    from tensorgrid import cli_endpoint
    from tensorgrid.errors import TensorGridError

    fields = cli_endpoint.endpoint_fields(parse("endpoint", "create", "--model", "m", "--replicas", "3"))
    assert (fields["min_replicas"], fields["max_replicas"]) == (3, 3)
    with pytest.raises(TensorGridError, match="sets both bounds"):
        ns = parse("endpoint", "create", "--model", "m", "--replicas", "3", "--max-replicas", "4")
        cli_endpoint.endpoint_fields(ns)
