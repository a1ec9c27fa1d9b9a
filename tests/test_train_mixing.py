"""The ratio sampler: exact per-step counts, rank agreement, determinism, epochs, resumability."""

from __future__ import annotations

from collections import Counter

import pytest

from sgt_data.train.mixing import RatioSampler, check_world, task_pattern, task_stream
from sgt_data.train.step import lr_factor

CASES = [
    ({"seg": 40, "vqa": 20}, 1),
    ({"seg": 8, "vqa": 4}, 4),
    ({"seg": 16, "vqa": 8}, 8),
    ({"seg": 6, "edge": 3, "vqa": 3}, 3),
]


@pytest.mark.parametrize("counts,world", CASES)
def test_ratio_exact_in_every_step_and_ranks_agree(counts, world):
    sizes = {"seg": 97, "edge": 97, "depth": 97, "vqa": 41}
    sampler = RatioSampler(counts, sizes, seed=3, world_size=world)
    total: Counter[str] = Counter()
    for step in range(200):
        plans = [sampler.step_plan(step, r) for r in range(world)]
        # Same task sequence on every rank: micro-batch i runs the same modules everywhere.
        assert len({tuple(d.task for d in p) for p in plans}) == 1
        got = Counter(d.task for p in plans for d in p)
        assert got == Counter(counts), f"step {step}: {got} != {counts}"
        # The ranks' shares are exactly the step's global draws, nothing duplicated or lost.
        flat = sorted((d.task, d.index, d.seed) for p in plans for d in p)
        glob = sorted((d.task, d.index, d.seed) for ds in sampler.global_plan(step).values() for d in ds)
        assert flat == glob
        total.update(got)
    assert total["seg"] == 200 * counts["seg"]
    assert total["seg"] * counts["vqa"] == total["vqa"] * counts["seg"]


def test_plan_is_pure_function_of_step_and_seed():
    a = RatioSampler({"seg": 4, "vqa": 2}, {"seg": 10, "vqa": 7}, seed=1)
    b = RatioSampler({"seg": 4, "vqa": 2}, {"seg": 10, "vqa": 7}, seed=1)
    c = RatioSampler({"seg": 4, "vqa": 2}, {"seg": 10, "vqa": 7}, seed=2)
    assert list(a.iter_draws(0, 30)) == list(b.iter_draws(0, 30))
    # Resuming at step 17 yields exactly the tail of the straight run.
    assert list(a.iter_draws(17, 30)) == list(a.iter_draws(0, 30))[17 * 6 :]
    assert list(a.iter_draws(0, 5)) != list(c.iter_draws(0, 5))


def test_global_data_independent_of_world_size():
    sizes = {"seg": 50, "vqa": 20}
    one = RatioSampler({"seg": 8, "vqa": 4}, sizes, seed=0, world_size=1)
    four = RatioSampler({"seg": 8, "vqa": 4}, sizes, seed=0, world_size=4)
    for step in (0, 5, 33):
        assert sorted(one.step_plan(step)) == sorted(d for r in range(4) for d in four.step_plan(step, r))


def test_each_epoch_is_a_permutation_and_epochs_differ():
    draws = task_stream(seed=0, task="seg", size=13, start=0, n=39)
    epochs = [[d.index for d in draws[i : i + 13]] for i in (0, 13, 26)]
    assert all(sorted(e) == list(range(13)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != list(range(13)), "order must not follow file order"
    assert len({d.seed for d in draws}) == 39, "every draw gets its own prepare seed"


def test_task_pattern_interleaves_evenly():
    assert task_pattern({"seg": 4, "vqa": 2}) == ["seg", "vqa", "seg", "seg", "vqa", "seg"]
    pattern = task_pattern({"seg": 20, "vqa": 10})
    # No run of vqa, and seg never more than 2 in a row: every micro-batch of 3 holds the 2:1 mix.
    assert all(Counter(pattern[i : i + 3]) == Counter({"seg": 2, "vqa": 1}) for i in range(0, 30, 3))


def test_world_size_that_cannot_split_is_explained():
    problems = check_world({"seg": 40, "vqa": 20}, 8)
    assert problems and "vqa" in problems[0] and "multiple of 24" in problems[0]
    assert check_world({"seg": 48, "vqa": 24}, 8) == []
    with pytest.raises(ValueError, match="cannot be split"):
        RatioSampler({"seg": 2, "vqa": 1}, {"seg": 5, "vqa": 5}, seed=0, world_size=2)
    with pytest.raises(ValueError, match="no usable rows"):
        task_stream(0, "vqa", 0, 0, 1)


def test_lr_schedule_warmup_constant_cosine():
    assert [lr_factor(s, 4, 20, "constant", 0.0) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(19, 4, 20, "constant", 0.0) == 1.0
    cos = [lr_factor(s, 0, 10, "cosine", 0.1) for s in range(11)]
    assert cos[0] == 1.0 and abs(cos[10] - 0.1) < 1e-12
    assert all(a >= b for a, b in zip(cos, cos[1:]))
