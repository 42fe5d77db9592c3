"""The countdown verifier on hand-made responses (one per rule), and the built-in countdown task."""

from __future__ import annotations

import statistics
from itertools import permutations

import pytest

from real_lightning.data import CountdownTask, DatasetSpec, RolloutDataModule, load_dataset_spec
from real_lightning.data.config import VerifierConfig
from real_lightning.data.countdown import solutions
from real_lightning.rewards import REWARD_FUNCTIONS, check_countdown, countdown_reward
from real_lightning.rewards.countdown import parse_problem

PROBLEM = "3 7 9 4>30"


@pytest.mark.parametrize(
    ("response", "verdict"),
    [
        ("7*4=28;28+3=31;31-1=30;\\boxed{30}", "unavailable"),  # no 1 among 3 7 9 4
        ("3*7=21;21+9=30;\\boxed{30}", "correct"),
        ("7*3=21;9+21=30;\\boxed{30}", "correct"),  # operand order is free
        ("9*4=36;36-7=29;29+3=32;32-2=30;\\boxed{30}", "unavailable"),  # 2 was never made
        ("  3*7=21;21+9=30;\\boxed{30}\n", "correct"),  # surrounding whitespace
        ("3*7=21;21+9=30;\\boxed{30}<|endoftext|>", "malformed"),
        ("3*7=21;21+9=30;", "malformed"),  # no box
        ("\\boxed{30}", "malformed"),  # no step
        ("3*7=21;21+9=30\\boxed{30}", "malformed"),  # step without ';'
        ("3*7=21;21+9=30;\\boxed{30}\\boxed{30}", "malformed"),
        ("3 * 7=21;21+9=30;\\boxed{30}", "malformed"),  # spaces inside a step
        ("3/7=21;21+9=30;\\boxed{30}", "malformed"),  # no division
        ("3*7=22;22+8=30;\\boxed{30}", "arithmetic"),
        ("3*7=21;21+9=31;\\boxed{31}", "arithmetic"),
        ("3*3=9;9+21=30;\\boxed{30}", "unavailable"),  # one 3 given, used twice
        ("21+9=30;3*7=21;\\boxed{21}", "unavailable"),  # 21 used before it is made
        ("3*7=21;21+9=30;30-21=9;9+21=30;\\boxed{30}", "unavailable"),  # a result used twice
        ("3*7=21;21+9=30;\\boxed{29}", "answer_mismatch"),
        ("3*7=21;\\boxed{30}", "answer_mismatch"),
        ("3*7=21;21+4=25;\\boxed{25}", "wrong_target"),
        ("9-4=5;7*5=35;35-3=32;\\boxed{32}", "wrong_target"),
        ("4-9=5;\\boxed{5}", "arithmetic"),  # a negative result cannot be written, nor faked
        ("7-7=0;9*3=27;27+3=30;\\boxed{30}", "unavailable"),
        ("4*3=12;12-12=0;\\boxed{0}", "unavailable"),
    ],
)
def test_each_rule_has_a_case(response: str, verdict: str) -> None:
    assert check_countdown(response, PROBLEM) == verdict
    assert countdown_reward(response, PROBLEM) == (1.0 if verdict == "correct" else 0.0)


def test_wasted_steps_and_zero_results_are_accepted_when_the_bookkeeping_is_right() -> None:
    assert countdown_reward("9-4=5;3*7=21;21+9=30;\\boxed{30}", "3 7 9 4>30") == 0.0  # 9 was used by 9-4
    assert countdown_reward("4-3=1;3*7=21;21+9=30;\\boxed{30}", "3 3 7 9 4>30") == 1.0  # 1 never used
    assert countdown_reward("4-4=0;9*3=27;27+3=30;\\boxed{30}", "4 4 9 3 3>30") == 1.0


def test_problem_parsing_and_its_errors() -> None:
    assert parse_problem("3 7 9 4>30") == ([3, 7, 9, 4], 30)
    assert parse_problem("3 7 9 4>30:") == ([3, 7, 9, 4], 30)
    with pytest.raises(ValueError, match="like '3 7 9 4>30'"):
        parse_problem("3,7,9,4 -> 30")


def _brute_force(numbers: tuple[int, ...], target: int) -> set[str]:
    """Every chain of steps over the pool (operands taken out, results put in, each tagged with the step that
    made it), kept when the verifier accepts its text and no step is wasted (every result but the last is an
    operand of a later step; no result <= 0)."""
    problem = f"{' '.join(map(str, numbers))}>{target}"
    found: set[str] = set()

    def grow(pool: list[tuple[int, int]], steps: list[str], consumed: set[int]) -> None:
        if steps:
            text = ";".join(steps) + f";\\boxed{{{target}}}"
            if consumed == set(range(len(steps) - 1)) and countdown_reward(text, problem) == 1.0:
                found.add(text)
        for i, j in permutations(range(len(pool)), 2):
            (a, made_a), (b, made_b) = pool[i], pool[j]
            rest = [p for k, p in enumerate(pool) if k not in (i, j)]
            for op, c in (("+", a + b), ("-", a - b), ("*", a * b)):
                if c > 0:
                    grow([*rest, (c, len(steps))], [*steps, f"{a}{op}{b}={c}"], consumed | {made_a, made_b} - {-1})

    grow([(n, -1) for n in numbers], [], set())
    return found


@pytest.mark.parametrize(
    ("numbers", "target"), [((3, 7, 9, 4), 30), ((2, 2, 5), 20), ((1, 2, 3), 9), ((6, 1, 8, 8), 56)]
)
def test_solutions_are_every_verified_response_without_wasted_steps(numbers: tuple[int, ...], target: int) -> None:
    listed = set(solutions(numbers, target))
    assert len(listed) == len(solutions(numbers, target))  # no repeats
    assert listed == _brute_force(numbers, target)
    for order in permutations(numbers):  # the order of the given numbers does not matter
        assert set(solutions(order, target)) == listed


def test_task_splits_are_fixed_disjoint_and_solvable() -> None:
    task = CountdownTask(num_train=2000, num_held_out=64)
    train, test = task.records("train"), task.records("test")
    assert len(train) == 2000 and len(test) == 64
    assert {r.ground_truth for r in train}.isdisjoint({r.ground_truth for r in test})
    assert len({r.ground_truth for r in train}) == 2000
    assert test == CountdownTask(num_train=10, num_held_out=64).records("test")  # held-out: independent of train
    for record in test:
        numbers, target = parse_problem(record.ground_truth)
        assert record.prompt == record.ground_truth + ":" and len(numbers) == 4
        assert 10 <= target <= 99 and target not in numbers and all(1 <= n <= 9 for n in numbers)
        assert solutions(tuple(numbers), target)  # every problem has a solution
    counts = [len(solutions(tuple(parse_problem(r.ground_truth)[0]), parse_problem(r.ground_truth)[1])) for r in test]
    assert statistics.median(counts) >= 10  # many correct responses per problem


def test_task_options_are_checked() -> None:
    with pytest.raises(ValueError, match="num_numbers must be in"):
        CountdownTask(num_numbers=7)
    with pytest.raises(ValueError, match="target_range"):
        CountdownTask(target_range=(50, 10))
    with pytest.raises(ValueError, match=r"only \d+ distinct problems"):
        CountdownTask(num_numbers=2, max_number=2, target_range=(10, 99), num_held_out=5).records("test")


def test_builtin_source_and_its_reward() -> None:
    loaded = load_dataset_spec(DatasetSpec("builtin:countdown", "test", options={"num_held_out": 8}))
    assert len(loaded.records) == 8 and loaded.records[0].data_source == "countdown"
    assert REWARD_FUNCTIONS["countdown"] is countdown_reward
    train = DatasetSpec("builtin:countdown", "train", options={"num_train": 100})
    RolloutDataModule(train=train, verifier=VerifierConfig(reward="countdown"))
    with pytest.raises(ValueError, match=r"graded by the 'countdown' reward.*set data\.verifier\.reward: countdown"):
        RolloutDataModule(train=train)
    with pytest.raises(ValueError, match="builtin:arithmetic is graded by the 'math' reward"):
        RolloutDataModule(train=DatasetSpec("builtin:arithmetic"), verifier=VerifierConfig(reward="countdown"))
    yours = VerifierConfig(reward="tests.rewards_for_tests:always_one")
    RolloutDataModule(train=train, verifier=yours)  # a reward of your own: allowed
