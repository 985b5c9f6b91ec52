"""The synthetic recall tasks: layouts, scoring, seeds, the accuracy helper and the settings' errors."""

from __future__ import annotations

import pytest
import torch

from temporal_eigenstate_networks.data.synthetic_tasks import (
    IGNORE_INDEX,
    SELECTIVE_COPYING_FIRST_DATA,
    SELECTIVE_COPYING_MARKER,
    SELECTIVE_COPYING_NOISE,
    TASKS,
    SyntheticError,
    TaskBatch,
    accuracy,
    induction_heads,
    induction_trigger,
    induction_vocab,
    mqar,
    num_scored,
    selective_copying,
    selective_copying_vocab,
)

GENERATORS = {
    "mqar": lambda seed=0: mqar(16, 64, vocab_size=256, num_kv_pairs=8, seed=seed),
    "selective_copying": lambda seed=0: selective_copying(16, 64, num_tokens=8, vocab_size=6, seed=seed),
    "induction_heads": lambda seed=0: induction_heads(16, 64, vocab_size=8, seed=seed),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_shapes_and_dtypes(name):
    batch = GENERATORS[name]()
    assert isinstance(batch, TaskBatch)
    assert batch.inputs.shape == batch.targets.shape == (16, 64)
    assert batch.inputs.dtype == batch.targets.dtype == torch.int64
    assert len(batch) == 16
    assert (batch.inputs >= 0).all()


# --------------------------------------------------------------------------------------------------------- MQAR


def test_mqar_every_query_is_answered_by_its_pair():
    vocab, pairs, length = 256, 8, 64
    batch = mqar(32, length, vocab_size=vocab, num_kv_pairs=pairs, random_non_queries=True, seed=3)
    context = 2 * pairs
    for inputs, targets in zip(batch.inputs, batch.targets, strict=True):
        keys, values = inputs[0:context:2], inputs[1:context:2]
        assert ((keys >= 1) & (keys < vocab // 2)).all()
        assert ((values >= vocab // 2) & (values < vocab)).all()
        assert keys.unique().numel() == pairs and values.unique().numel() == pairs
        scored = (targets != IGNORE_INDEX).nonzero().flatten()
        assert scored.numel() == pairs
        assert (scored >= context).all() and ((scored - context) % 2 == 0).all()
        assert sorted(inputs[scored].tolist()) == sorted(keys.tolist())  # every key is queried once
        for position in scored.tolist():
            key = inputs[position]
            where = (keys == key).nonzero().flatten()
            assert where.numel() == 1  # the key appears exactly once in the pair section
            assert inputs[2 * int(where) + 1] == targets[position]  # its value follows it there


def test_mqar_filler_is_random_or_zero():
    noisy = mqar(8, 64, vocab_size=256, num_kv_pairs=4, random_non_queries=True, seed=0)
    quiet = mqar(8, 64, vocab_size=256, num_kv_pairs=4, random_non_queries=False, seed=0)
    filler = quiet.targets[:, 8:] == IGNORE_INDEX
    assert (quiet.inputs[:, 8:][filler] == 0).all()
    assert noisy.inputs[:, 8:][filler].unique().numel() > 50  # spread over the vocabulary
    assert torch.equal(noisy.targets, quiet.targets)


@pytest.mark.parametrize(("length", "pairs"), [(64, 4), (128, 8), (256, 16), (512, 64), (1024, 64)])
def test_mqar_default_pairs_follow_zoology(length, pairs):
    batch = mqar(2, length, vocab_size=2048)
    assert (batch.targets != IGNORE_INDEX).sum(dim=1).tolist() == [pairs, pairs]


def test_mqar_power_law_favours_short_gaps():
    length, pairs = 256, 16
    slots = (length - 2 * pairs) // 2
    quarter = slots // 4

    def gap_counts(power_a: float) -> tuple[int, int]:
        batch = mqar(1000, length, vocab_size=4096, num_kv_pairs=pairs, power_a=power_a, seed=11)
        gaps = ((batch.targets != IGNORE_INDEX).nonzero()[:, 1] - 2 * pairs) // 2
        return int((gaps < quarter).sum()), int((gaps >= slots - quarter).sum())

    near, far = gap_counts(0.01)
    assert near > 3 * far  # a steep power law: about 8x at these settings
    near, far = gap_counts(1.0)
    assert 0.8 < near / far < 1.25  # a = 1 is uniform


# ------------------------------------------------------------------------------------------- selective copying


def test_selective_copying_layout():
    length, tokens, symbols = 48, 6, 5
    batch = selective_copying(32, length, num_tokens=tokens, vocab_size=symbols, seed=2)
    span = length - tokens
    for inputs, targets in zip(batch.inputs, batch.targets, strict=True):
        head = inputs[:span]
        is_data = head >= SELECTIVE_COPYING_FIRST_DATA
        assert int(is_data.sum()) == tokens
        assert (head[~is_data] == SELECTIVE_COPYING_NOISE).all()
        assert (inputs[span:] == SELECTIVE_COPYING_MARKER).all()
        assert (inputs < selective_copying_vocab(symbols)).all()
        assert torch.equal(targets[span:], head[is_data])  # the data tokens, in order, at the markers
        assert (targets[:span] == IGNORE_INDEX).all()
    assert batch.num_scored == 32 * tokens


def test_selective_copying_shortest_length_has_one_noise_token():
    batch = selective_copying(8, 9, num_tokens=4, vocab_size=3)
    assert ((batch.inputs[:, :5] == SELECTIVE_COPYING_NOISE).sum(dim=1) == 1).all()


# --------------------------------------------------------------------------------------------- induction heads


@pytest.mark.parametrize("length", [3, 4, 64, 1 << 20])
def test_induction_heads_layout(length):
    symbols = 6
    examples = 4 if length > 4096 else 64
    batch = induction_heads(examples, length, vocab_size=symbols, seed=5)
    trigger = induction_trigger(symbols)
    assert trigger == symbols and induction_vocab(symbols) == symbols + 1
    is_trigger = batch.inputs == trigger
    assert (is_trigger.sum(dim=1) == 2).all()
    assert is_trigger[:, -1].all()
    first = is_trigger.int().argmax(dim=1)
    answer = batch.inputs[torch.arange(examples), first + 1]
    assert (answer < symbols).all()
    assert torch.equal(batch.targets[:, -1], answer)
    assert (batch.targets[:, :-1] == IGNORE_INDEX).all()
    assert batch.num_scored == examples


# ---------------------------------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_seeds_reproduce_and_differ_without_touching_the_global_rng(name):
    state = torch.get_rng_state()
    first, again, other = GENERATORS[name](7), GENERATORS[name](7), GENERATORS[name](8)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.targets, again.targets)
    assert not torch.equal(first.inputs, other.inputs)


# -------------------------------------------------------------------------------------------------- accuracy


def perfect_logits(targets: torch.Tensor, vocab: int) -> torch.Tensor:
    """One-hot logits of the targets; unscored positions point at token 0."""
    return torch.nn.functional.one_hot(targets.clamp_min(0), vocab).float()


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_accuracy_counts_scored_positions_only(name):
    batch = GENERATORS[name]()
    vocab = int(batch.inputs.max()) + 1
    total = num_scored(batch.targets)
    logits = perfect_logits(batch.targets, vocab)
    assert accuracy(logits, batch.targets) == (total, total)

    unscored = batch.targets == IGNORE_INDEX
    noisy = logits.clone()
    noisy[unscored] = torch.randn(int(unscored.sum()), vocab)  # garbage where nothing is scored
    assert accuracy(noisy, batch.targets) == (total, total)

    n, t = (batch.targets != IGNORE_INDEX).nonzero()[0].tolist()
    wrong = logits.clone()
    wrong[n, t] = 0.0
    wrong[n, t, (int(batch.targets[n, t]) + 1) % vocab] = 1.0
    assert accuracy(wrong, batch.targets) == (total - 1, total)


def test_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        accuracy(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: mqar(2, 64, vocab_size=8192, num_kv_pairs=17), "needs seq_len >= 68"),
        (lambda: mqar(2, 64, vocab_size=16, num_kv_pairs=8), "must be >= 18"),
        (lambda: mqar(2, 63, vocab_size=8192, num_kv_pairs=4), "must be even"),
        (lambda: mqar(2, 64, vocab_size=64, num_kv_pairs=4), "must exceed seq_len"),
        (lambda: mqar(2, 64, power_a=0.0), "power_a must be > 0"),
        (lambda: mqar(0, 64), "num_examples must be an integer >= 1"),
        (lambda: selective_copying(2, 32, num_tokens=16), "needs seq_len >= 33"),
        (lambda: selective_copying(2, 64, num_tokens=4, vocab_size=0), "vocab_size must be an integer >= 1"),
        (lambda: induction_heads(2, 2), "needs seq_len >= 3"),
    ],
)
def test_bad_settings_raise_one_line(make, fragment):
    with pytest.raises(SyntheticError, match=fragment) as error:
        make()
    assert "\n" not in str(error.value)


# -------------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", sorted(TASKS))
def test_registry_settings_generate_within_the_model_vocabulary(name):
    task = TASKS[name]
    assert task.name == name
    for settings in (task.cpu, task.paper):
        assert not {"num_examples", "seq_len", "seed"} & set(settings.options)
    options = task.cpu.options
    batch = task.generate(2, task.cpu.train_seq_len, seed=1, **options)
    vocab = task.model_vocab_size(options)
    assert int(batch.inputs.max()) < vocab and int(batch.targets.max()) < vocab
    assert batch.num_scored > 0


def test_registry_lengths():
    induction = TASKS["induction_heads"]
    assert induction.cpu.train_seq_len == 256 and max(induction.cpu.test_seq_lens) == 64 * 256
    assert max(induction.paper.test_seq_lens) == 1 << 20
    assert TASKS["selective_copying"].paper.train_seq_len == 4096
    assert TASKS["selective_copying"].model_vocab_size(TASKS["selective_copying"].paper.options) == 16
    assert TASKS["mqar"].model_vocab_size({}) == 8192
