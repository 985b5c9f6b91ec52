"""Synthetic recall tasks as in-memory data generators: MQAR (Zoology), selective copying and induction heads (Mamba).

Every generator returns a `TaskBatch` of causal-LM pairs: `targets[n, t]` is the token the model must predict after
reading `inputs[n, : t + 1]` (so `logits[:, t]` is scored against `targets[:, t]`), and `IGNORE_INDEX` (-100, what
`torch.nn.functional.cross_entropy` skips by default) everywhere that is not scored. Generation is seeded through a
local `torch.Generator` (never the global RNG) and fully vectorised over examples and positions, so test sets at
lengths of 10^4-10^6 cost little more than the memory of the tensors.

Sources of the task definitions (read, not copied):
- MQAR: HazyResearch/zoology, `zoology/data/multiquery_ar.py` (and the older `associative_recall.py::_mqar`),
  with the (seq_len, num_kv_pairs) pairs of the Zoology paper's Figure 2 in
  `zoology/experiments/paper/zoology_figure2.py`.
- Selective copying: the copying generator of state-spaces/s4, `src/dataloaders/datasets/copying.py`
  (`torch_copying_data` with `variable=True`), and the Mamba paper (Gu & Dao 2023), section 4.1.1, appendix E.1.
- Induction heads: the H3 synthetics of HazyResearch/safari, `src/dataloaders/synthetics.py`
  (`generate_induction_head`), the prior work the Mamba paper cites for this task (section 4.1.2, appendix E.1).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

IGNORE_INDEX = -100

# Rows of a (rows, columns) float scratch tensor drawn at once: bounds the memory of the sampling helpers.
_CHUNK_ELEMENTS = 1 << 22


class SyntheticError(ValueError):
    """A bad task setting, told in one line that names the setting and its limit.

    It subclasses ValueError so existing handlers keep working, while the command can catch exactly this type,
    print the message and exit 2 without a traceback.
    """


@dataclass(frozen=True)
class TaskBatch:
    """Causal-LM examples of a synthetic task: `inputs` and `targets`, both (N, T) int64.

    `targets[n, t]` is the token to predict at position t (after reading `inputs[n, : t + 1]`), and
    IGNORE_INDEX where nothing is scored.
    """

    inputs: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_scored(self) -> int:
        """How many positions are scored, over all examples."""
        return num_scored(self.targets)


# ---------------------------------------------------------------------------------------------------------------
# sampling helpers (all vectorised over rows; the only Python loops are over chunks of rows or rejection rounds)


def _generator(seed: int) -> torch.Generator:
    """A local CPU generator, so that no caller's global RNG state is read or changed."""
    return torch.Generator().manual_seed(int(seed))


def _row_chunks(rows: int, columns: int) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges whose (rows, columns) scratch tensors stay near _CHUNK_ELEMENTS elements."""
    step = max(1, _CHUNK_ELEMENTS // max(1, columns))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def _random_order(rows: int, high: int, k: int, gen: torch.Generator) -> Tensor:
    """The first k entries of an independent random permutation of [0, high) per row: (rows, k) int64."""
    out = torch.empty(rows, k, dtype=torch.int64)
    for start, stop in _row_chunks(rows, high):
        scores = torch.rand(stop - start, high, generator=gen)
        out[start:stop] = scores.argsort(dim=1)[:, :k]
    return out


def _distinct(rows: int, k: int, high: int, gen: torch.Generator) -> Tensor:
    """Per row, an ordered k-tuple of distinct integers from [0, high), uniform over all such tuples: (rows, k).

    For k much smaller than high (MQAR's keys among 4095 candidates), drawing with replacement and redrawing the
    repeated entries costs O(rows * k log k) instead of a permutation's O(rows * high). The redraw rule looks only
    at equality and position, never at values, so the result is invariant under relabelling the values and hence
    uniform. When k is more than half of high, the rejection rounds would grow long, so a permutation is used.
    """
    if k > high:
        raise ValueError(f"cannot draw {k} distinct values from {high}")
    if 2 * k > high:
        return _random_order(rows, high, k, gen)
    values = torch.randint(0, high, (rows, k), generator=gen)
    pending = torch.arange(rows)  # rows that may still hold a repeat: each round re-sorts only these
    while pending.numel():
        block = values[pending]
        ordered, order = block.sort(dim=1, stable=True)
        repeated_sorted = torch.zeros_like(ordered, dtype=torch.bool)
        repeated_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        repeated = torch.zeros_like(repeated_sorted).scatter_(1, order, repeated_sorted)
        bad = repeated.any(dim=1)
        pending, block, repeated = pending[bad], block[bad], repeated[bad]
        block[repeated] = torch.randint(0, high, (int(repeated.sum()),), generator=gen)
        values[pending] = block
    return values


def _weighted_without_replacement(rows: int, k: int, weights: Tensor, gen: torch.Generator) -> Tensor:
    """Per row, k indices drawn one after another without replacement with probability proportional to `weights`.

    Exponential-race (Gumbel top-k) sampling: the k largest of log(w_i) - log(E_i), E_i ~ Exp(1), in decreasing
    order, have exactly the law of k successive draws without replacement, so column j is the j-th draw.
    """
    log_w = weights.to(torch.float64).log()
    space = int(weights.numel())
    out = torch.empty(rows, k, dtype=torch.int64)
    for start, stop in _row_chunks(rows, space):
        races = torch.empty(stop - start, space, dtype=torch.float64).exponential_(generator=gen)
        out[start:stop] = (log_w - races.log()).topk(k, dim=1, sorted=True).indices
    return out


def _check_count(name: str, value: int, minimum: int = 1) -> None:
    """Integers such as num_examples must be at least `minimum`."""
    if int(value) != value or value < minimum:
        raise SyntheticError(f"{name} must be an integer >= {minimum}, got {value}")


# ---------------------------------------------------------------------------------------------------------------
# MQAR


# Zoology paper, Figure 2 (zoology/experiments/paper/zoology_figure2.py): the (input_seq_len, num_kv_pairs) pairs it
# trains and tests on. Not one ratio: seq_len / 16 up to 256, then 512 -> 64.
ZOOLOGY_KV_PAIRS: Mapping[int, int] = MappingProxyType({64: 4, 128: 8, 256: 16, 512: 64})


def default_num_kv_pairs(seq_len: int) -> int:
    """Zoology's Figure-2 number of pairs for `seq_len`; seq_len // 16 (their ratio up to 256) for other lengths."""
    return ZOOLOGY_KV_PAIRS.get(seq_len, max(1, seq_len // 16))


def mqar_vocab(vocab_size: int) -> int:
    """Model vocabulary of MQAR: the task's vocabulary itself (keys, values and filler all live in it)."""
    return vocab_size


def mqar(
    num_examples: int,
    seq_len: int,
    vocab_size: int = 8192,
    num_kv_pairs: int | None = None,
    power_a: float = 0.01,
    random_non_queries: bool = True,
    seed: int = 0,
) -> TaskBatch:
    """Multi-query associative recall as Zoology's `multiquery_ar` defines it (Arora et al. 2023).

    Layout, K = num_kv_pairs: positions 0..2K-1 hold K key-value pairs, key i at 2i and its value at 2i+1; keys are
    distinct, drawn from [1, vocab_size // 2), values distinct, from [vocab_size // 2, vocab_size). The rest of the
    sequence has (seq_len - 2K) / 2 query slots, at even offsets 2j after the pairs (position 2K + 2j). The K slots
    are drawn one after another without replacement with probability proportional to a * i^(a-1), i = j + 1 (a =
    power_a: short offsets far likelier; a = 1 is uniform), and the j-th drawn slot receives key j. The target at a
    query's position is its key's value; the value is not written into the next input (the model must recall it).
    Every other position after the pairs is filler: uniform over the whole vocabulary [0, vocab_size) with
    `random_non_queries` (Zoology's default, so filler can repeat a key or a value, never scored), or token 0
    without (what Zoology's Figure-2 configs set). Only the K query positions are scored, K per example.

    num_kv_pairs defaults to Zoology's Figure-2 value for the length (`default_num_kv_pairs`: 64->4, 128->8,
    256->16, 512->64); Zoology's hardest test slices use seq_len / 4, the maximum its bound allows.

    Bounds (Zoology's asserts, plus what distinct keys need): seq_len even, 4 * num_kv_pairs <= seq_len,
    vocab_size >= 2 * num_kv_pairs + 2, vocab_size > seq_len, power_a > 0.

    Deviations from Zoology, none of which changes the distribution of the data: one local generator instead of
    `np.random.seed` plus torch's global RNG for the filler (which Zoology's seed argument does not set; here the
    seed fixes every tensor); exponential-race sampling of the query slots instead of numpy's
    `choice(replace=False, p=...)` (both are successive draws without replacement); and no train/test pair or
    leakage check: the caller draws the test set with another seed.
    """
    _check_count("num_examples", num_examples)
    _check_count("seq_len", seq_len)
    if seq_len % 2:
        raise SyntheticError(
            f"MQAR seq_len must be even (query slots sit at even offsets, as in Zoology), got {seq_len}"
        )
    pairs = default_num_kv_pairs(seq_len) if num_kv_pairs is None else num_kv_pairs
    _check_count("num_kv_pairs", pairs)
    if 4 * pairs > seq_len:
        raise SyntheticError(
            f"MQAR num_kv_pairs={pairs} needs seq_len >= {4 * pairs} (4 * num_kv_pairs: the pairs, then as many "
            f"query slots), got seq_len={seq_len}; use num_kv_pairs <= {seq_len // 4}"
        )
    if vocab_size < 2 * pairs + 2:
        raise SyntheticError(
            f"MQAR vocab_size={vocab_size} is too small for num_kv_pairs={pairs} distinct keys from "
            f"[1, vocab_size // 2): it must be >= {2 * pairs + 2}"
        )
    if vocab_size <= seq_len:
        raise SyntheticError(f"MQAR vocab_size must exceed seq_len (Zoology's bound), got {vocab_size} <= {seq_len}")
    if not power_a > 0:
        raise SyntheticError(f"MQAR power_a must be > 0 (1 is uniform, small is a steep power law), got {power_a}")

    gen = _generator(seed)
    half = vocab_size // 2
    keys = _distinct(num_examples, pairs, half - 1, gen) + 1
    values = _distinct(num_examples, pairs, vocab_size - half, gen) + half

    context = 2 * pairs
    inputs = torch.zeros(num_examples, seq_len, dtype=torch.int64)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values

    slots = (seq_len - context) // 2
    offsets = torch.arange(1, slots + 1, dtype=torch.float64)
    weights = power_a * offsets ** (power_a - 1)
    positions = context + 2 * _weighted_without_replacement(num_examples, pairs, weights, gen)
    inputs.scatter_(1, positions, keys)
    targets = torch.full((num_examples, seq_len), IGNORE_INDEX, dtype=torch.int64)
    targets.scatter_(1, positions, values)

    if random_non_queries:
        filler = torch.zeros(num_examples, seq_len, dtype=torch.bool)
        filler[:, context:] = True
        filler.scatter_(1, positions, False)
        noise = torch.randint(0, vocab_size, (num_examples, seq_len), generator=gen)
        inputs = torch.where(filler, noise, inputs)
    return TaskBatch(inputs, targets)


# ---------------------------------------------------------------------------------------------------------------
# selective copying

SELECTIVE_COPYING_NOISE = 0
SELECTIVE_COPYING_MARKER = 1
SELECTIVE_COPYING_FIRST_DATA = 2


def selective_copying_vocab(vocab_size: int) -> int:
    """Model vocabulary of selective copying: noise (0), marker (1) and `vocab_size` data symbols (2, 3, ...)."""
    return vocab_size + SELECTIVE_COPYING_FIRST_DATA


def selective_copying(
    num_examples: int, seq_len: int, num_tokens: int = 16, vocab_size: int = 16, seed: int = 0
) -> TaskBatch:
    """Selective copying (Mamba paper, section 4.1.1; the S4 repository's `torch_copying_data(variable=True)`).

    Token ids: 0 = noise, 1 = marker, 2 .. vocab_size + 1 = data (`selective_copying_vocab`). With M = num_tokens,
    the first seq_len - M positions are noise except M data tokens, drawn uniformly with replacement from the data
    symbols, at M distinct positions drawn uniformly (their order in the sequence is the order to copy). The last M
    positions are markers. Marker i (position seq_len - M + i) is scored against data token i: while reading marker
    i the model outputs the i-th data token, so the whole answer is scored and nothing else (M per example).

    This is the S4 generator's layout (noise length L = seq_len - 2M, total L + 2M) with its ids renumbered: there
    the alphabet A holds noise 0, data 1..A-2 and marker A-1, so the Mamba paper's "vocabulary of 16 including the
    noise token" is 14 data symbols, vocab_size=14 here (model vocabulary 16). Bound: seq_len >= 2 * num_tokens + 1,
    at least one noise token, else nothing is selective.
    """
    _check_count("num_examples", num_examples)
    _check_count("num_tokens", num_tokens)
    _check_count("vocab_size", vocab_size)
    _check_count("seq_len", seq_len)
    minimum = 2 * num_tokens + 1
    if seq_len < minimum:
        raise SyntheticError(
            f"selective copying with num_tokens={num_tokens} needs seq_len >= {minimum} (2 * num_tokens + 1: the "
            f"data, at least one noise token, then the markers), got {seq_len}"
        )
    gen = _generator(seed)
    span = seq_len - num_tokens
    data = torch.randint(0, vocab_size, (num_examples, num_tokens), generator=gen) + SELECTIVE_COPYING_FIRST_DATA
    positions = _distinct(num_examples, num_tokens, span, gen).sort(dim=1).values
    inputs = torch.full((num_examples, seq_len), SELECTIVE_COPYING_NOISE, dtype=torch.int64)
    inputs.scatter_(1, positions, data)
    inputs[:, span:] = SELECTIVE_COPYING_MARKER
    targets = torch.full((num_examples, seq_len), IGNORE_INDEX, dtype=torch.int64)
    targets[:, span:] = data
    return TaskBatch(inputs, targets)


# ---------------------------------------------------------------------------------------------------------------
# induction heads

INDUCTION_MIN_SEQ_LEN = 3


def induction_trigger(vocab_size: int) -> int:
    """The trigger token of induction heads: the id after the data symbols 0 .. vocab_size - 1."""
    return vocab_size


def induction_vocab(vocab_size: int) -> int:
    """Model vocabulary of induction heads: `vocab_size` data symbols and the trigger."""
    return vocab_size + 1


def induction_heads(num_examples: int, seq_len: int, vocab_size: int = 16, seed: int = 0) -> TaskBatch:
    """Induction heads (Mamba paper, section 4.1.2; the H3 synthetics' `generate_induction_head`).

    Token ids: 0 .. vocab_size - 1 = data, vocab_size = trigger (`induction_vocab`). Every position holds a uniform
    data token except two triggers: one at a position drawn uniformly from [0, seq_len - 3], and the last position.
    The token after the first trigger is a data token (never the final trigger), and it is the target at the last
    position, the only one scored (one per example). The trigger appears nowhere else.

    Minimum seq_len 3 ([trigger, answer, trigger]). In the H3 code the vocabulary size counts two special tokens
    (the trigger and an unused no-op), so the Mamba paper's vocabulary of 16 is 14 data symbols, vocab_size=14 here;
    its sequences are 256 random tokens plus the final trigger (257 inputs). H3 also trains on every next-token
    label and scores only the last one at test; here only the last position is ever scored, since the other
    tokens are uniform noise that no model can predict.
    """
    _check_count("num_examples", num_examples)
    _check_count("vocab_size", vocab_size)
    if int(seq_len) != seq_len or seq_len < INDUCTION_MIN_SEQ_LEN:
        raise SyntheticError(
            f"induction heads needs seq_len >= {INDUCTION_MIN_SEQ_LEN} (trigger, answer, final trigger), got {seq_len}"
        )
    gen = _generator(seed)
    trigger = induction_trigger(vocab_size)
    inputs = torch.randint(0, vocab_size, (num_examples, seq_len), generator=gen)
    first = torch.randint(0, seq_len - 2, (num_examples,), generator=gen)
    rows = torch.arange(num_examples)
    inputs[rows, first] = trigger
    inputs[:, -1] = trigger
    targets = torch.full((num_examples, seq_len), IGNORE_INDEX, dtype=torch.int64)
    targets[:, -1] = inputs[rows, first + 1]
    return TaskBatch(inputs, targets)


# ---------------------------------------------------------------------------------------------------------------
# scoring


def num_scored(targets: Tensor) -> int:
    """How many positions of `targets` are scored (not IGNORE_INDEX)."""
    return int((targets != IGNORE_INDEX).sum())


def accuracy(logits: Tensor, targets: Tensor) -> tuple[int, int]:
    """(correct, total) over the scored positions: argmax of `logits` (N, T, V) against `targets` (N, T).

    Every scored position counts once: MQAR per query, selective copying per data token, induction heads per
    sequence. Only the scored rows of the logits are gathered, so long test sequences cost no (N, T) argmax.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)} plus a vocabulary")
    mask = targets != IGNORE_INDEX
    total = int(mask.sum())
    if total == 0:
        return 0, 0
    predicted = logits[mask].argmax(dim=-1)
    correct = int((predicted == targets[mask].to(predicted.device)).sum())
    return correct, total


# ---------------------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class TaskSettings:
    """One setting of a task: lengths to train and test at, and the generator's other keyword arguments.

    `options` never holds num_examples, seq_len or seed: the caller passes those. Example counts are None where
    the source draws fresh data every step instead of a fixed set.
    """

    train_seq_len: int
    test_seq_lens: tuple[int, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    train_examples: int | None = None
    test_examples: int | None = None
    note: str = ""


@dataclass(frozen=True)
class SyntheticTask:
    """A registered task: its generator, its model vocabulary, CPU defaults and the paper's settings."""

    name: str
    generate: Callable[..., TaskBatch]
    model_vocab: Callable[[int], int]
    cpu: TaskSettings
    paper: TaskSettings
    source: str

    def model_vocab_size(self, options: Mapping[str, Any]) -> int:
        """Model vocabulary for these generator options (the generator's own default when vocab_size is absent)."""
        if "vocab_size" in options:
            return self.model_vocab(int(options["vocab_size"]))
        return self.model_vocab(int(inspect.signature(self.generate).parameters["vocab_size"].default))


def _powers_of_two(low: int, high: int) -> tuple[int, ...]:
    """low, 2 low, ... up to high (both powers of two)."""
    out = []
    length = low
    while length <= high:
        out.append(length)
        length *= 2
    return tuple(out)


TASKS: Mapping[str, SyntheticTask] = MappingProxyType(
    {
        "mqar": SyntheticTask(
            name="mqar",
            generate=mqar,
            model_vocab=mqar_vocab,
            # Zoology's shortest Figure-2 length; for the CPU a vocabulary of 512, not 8192 (an output layer over
            # 8192 tokens is most of a small model's step), and fewer examples than its 100k.
            cpu=TaskSettings(
                train_seq_len=64,
                test_seq_lens=(64,),
                options={"vocab_size": 512, "num_kv_pairs": 4, "power_a": 0.01},
                train_examples=20_000,
                test_examples=1_000,
            ),
            paper=TaskSettings(
                train_seq_len=256,
                test_seq_lens=(256,),
                options={"vocab_size": 8192, "num_kv_pairs": 16, "power_a": 0.01},
                train_examples=100_000,
                test_examples=3_000,
                note="Zoology Figure 2 trains and tests each of (64, 4), (128, 8), (256, 16), (512, 64) separately",
            ),
            source="Arora et al. 2023 (Zoology); HazyResearch/zoology zoology/data/multiquery_ar.py",
        ),
        "selective_copying": SyntheticTask(
            name="selective_copying",
            generate=selective_copying,
            model_vocab=selective_copying_vocab,
            # The paper's task at a 16x shorter length (4096 -> 256) for the CPU.
            cpu=TaskSettings(train_seq_len=256, test_seq_lens=(256,), options={"num_tokens": 16, "vocab_size": 14}),
            paper=TaskSettings(
                train_seq_len=4096,
                test_seq_lens=(4096,),
                options={"num_tokens": 16, "vocab_size": 14},
                note="vocabulary 16 = noise + marker + 14 data symbols; fresh data every step",
            ),
            source="Gu & Dao 2023 (Mamba) 4.1.1, E.1; state-spaces/s4 src/dataloaders/datasets/copying.py",
        ),
        "induction_heads": SyntheticTask(
            name="induction_heads",
            generate=induction_heads,
            model_vocab=induction_vocab,
            # The paper's training length; tested up to 64x (16,384) instead of 4096x (2^20) for the CPU.
            cpu=TaskSettings(train_seq_len=256, test_seq_lens=_powers_of_two(64, 16_384), options={"vocab_size": 14}),
            paper=TaskSettings(
                train_seq_len=256,
                test_seq_lens=_powers_of_two(64, 1 << 20),
                options={"vocab_size": 14},
                note="vocabulary 16 in H3's count = 14 data symbols + trigger + unused no-op; fresh data every step",
            ),
            source="Gu & Dao 2023 (Mamba) 4.1.2, E.1; HazyResearch/safari src/dataloaders/synthetics.py",
        ),
    }
)
