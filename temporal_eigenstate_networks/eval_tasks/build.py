"""Rebuild the JSONL files of the local lm-evaluation-harness tasks from the Shakespeare validation split.

    python -m temporal_eigenstate_networks.eval_tasks.build          # writes eval_tasks/*.jsonl from the cached corpus
    python -m temporal_eigenstate_networks.eval_tasks.build --check  # exit 1 if the committed files differ

The validation split is the last 10% of the corpus text, the part `ten train --dataset shakespeare` holds
out (the corpus is ASCII, so for the byte tokenizer the character cut is exactly the token cut). Everything
is a pure function of the text and a seed, so the output is the same on every machine.

- ten_shakespeare_ppl.jsonl: {"text", "offset"} documents of about 1-3 KB, whole blank-line-separated
  blocks (speeches, stage directions) of the validation text, evenly spaced through it.
- ten_shakespeare_mc.jsonl: {"context", "choices", "label", "offset"} items: four lines of a speech and
  the first words of the next line (cut at a space in its first half), then the true rest of that line
  among four; the three others are rests of lines of speech from elsewhere in the validation split, cut at
  a space so that all four have the same length. lm-eval joins context and choice with one space, so
  context + " " + true rest is exactly the validation text.

`offset` is where the document (the context) starts, in characters from the start of the validation text.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..data.batching import VALIDATION_FRACTION

TASK_DIR = Path(__file__).resolve().parent
PPL_FILE = "ten_shakespeare_ppl.jsonl"
MC_FILE = "ten_shakespeare_mc.jsonl"
SEED = 1234
PPL_DOCS = 60
PPL_MIN_CHARS, PPL_MAX_CHARS = 1000, 3000
MC_ITEMS = 200
MC_CONTEXT_LINES = 4
MC_CHOICES = 4
MC_MIN_LINE_CHARS = 20
MC_DISTRACTOR_GAP = 100  # distractors come from lines at least this far (in lines) from the true one
MC_MIN_PREFIX_WORDS = 2  # words of a line kept before its cut (in the context; before a distractor's rest)

_BLANK_RUN = re.compile(r"\n(?:[ \t]*\n)+")  # one or more blank lines: a block boundary
_SPEAKER = re.compile(r"[A-Z][A-Z0-9' ,.&-]*\.")  # "SIR TOBY.", "ACT I." — headings, never speech


def validation_text(text: str) -> str:
    """The held-out part of the corpus, cut where ten's 90/10 split cuts it."""
    return text[int(len(text) * (1.0 - VALIDATION_FRACTION)) :]


def _clean_start(val: str) -> int:
    """The offset of the first whole block: the split cuts mid-sentence, so skip to after a blank line."""
    match = _BLANK_RUN.search(val)
    return match.end() if match else len(val)


def _evenly(items: list[Any], count: int) -> list[Any]:
    """`count` items spread evenly over the list (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def perplexity_documents(
    val: str, count: int = PPL_DOCS, min_chars: int = PPL_MIN_CHARS, max_chars: int = PPL_MAX_CHARS
) -> list[dict[str, Any]]:
    """Runs of whole blocks holding min_chars..max_chars characters, consecutive and non-overlapping, then
    `count` of them evenly spaced. Each text is an exact slice of `val`; `offset` is where it starts."""
    start = _clean_start(val)
    ends = [m.start() for m in _BLANK_RUN.finditer(val, start)] + [len(val.rstrip("\n"))]
    starts = {m.start(): m.end() for m in _BLANK_RUN.finditer(val, start)}  # block end -> next block start
    documents, doc_start = [], start
    for end in ends:
        if end <= doc_start:
            continue
        size = end - doc_start
        if size >= min_chars:
            if size <= max_chars:
                documents.append({"text": val[doc_start:end], "offset": doc_start})
            doc_start = starts.get(end, len(val))  # a run too long is dropped whole; start again after it
    return _evenly(documents, count)


def _is_speech(line: str) -> bool:
    """A line of verse or prose: unindented, long enough, not a speaker heading or a stage direction."""
    return (
        line == line.strip()
        and len(line) >= MC_MIN_LINE_CHARS
        and not line.startswith("[")
        and _SPEAKER.fullmatch(line) is None
        and any(c.islower() for c in line)
    )


def _word_cuts(line: str, min_words: int = MC_MIN_PREFIX_WORDS) -> list[int]:
    """Where `line` may be cut: indices of single spaces with at least `min_words` words before them."""
    return [
        p
        for p, char in enumerate(line)
        if char == " "
        and 0 < p < len(line) - 1
        and line[p - 1] != " "
        and line[p + 1] != " "
        and len(line[:p].split()) >= min_words
    ]


def multiple_choice_items(
    val: str, count: int = MC_ITEMS, seed: int = SEED, context_lines: int = MC_CONTEXT_LINES
) -> list[dict[str, Any]]:
    """Items that ask how a line of speech goes on, given the lines before it and its first few words.

    The context is `context_lines` non-blank lines, a newline, then the start of the next line (a line of
    speech) cut at a space in its first half, keeping at least MC_MIN_PREFIX_WORDS words. The answer is the
    rest of that line after the space, so `context + " " + answer` is exactly the text at `offset` and the
    answer ends where the line ends. The three distractors are rests of distinct lines of speech at least
    MC_DISTRACTOR_GAP lines away, each cut at a space (after at least MC_MIN_PREFIX_WORDS words) that leaves
    exactly as many characters as the answer has; a line with no such space is passed over. Equal lengths
    give length nothing to tell: distractors merely close in length, spread around the answer's, would make
    the answer the one of middling length (picking a choice that is neither the shortest nor the longest
    would score 0.32 with lengths within 20% of the answer's). All choices differ case-insensitively. The
    answer's cut, the distractor lines and the answer's position come from one seeded generator.
    """
    start = _clean_start(val)
    lines, offsets, position = [], [], start
    for line in val[start:].split("\n"):
        lines.append(line)
        offsets.append(position)
        position += len(line) + 1
    speech = [i for i, line in enumerate(lines) if _is_speech(line)]
    cuts = {i: _word_cuts(lines[i]) for i in speech}
    answers = [
        i
        for i in speech
        if i >= context_lines
        and all(lines[j].strip() for j in range(i - context_lines, i))
        and any(2 * p <= len(lines[i]) for p in cuts[i])
    ]
    rng = random.Random(seed)
    items = []
    for i in _evenly(answers, count):
        line = lines[i]
        cut = rng.choice([p for p in cuts[i] if 2 * p <= len(line)])
        prefix, gold = line[:cut], line[cut + 1 :]
        seen = {gold.casefold()}
        distractors: list[str] = []
        pool = [j for j in speech if abs(j - i) >= MC_DISTRACTOR_GAP]
        while len(distractors) < MC_CHOICES - 1 and pool:
            j = pool.pop(rng.randrange(len(pool)))
            rest = lines[j][len(lines[j]) - len(gold) :]
            if len(lines[j]) - len(gold) - 1 in cuts[j] and rest.casefold() not in seen:
                seen.add(rest.casefold())
                distractors.append(rest)
        if len(distractors) < MC_CHOICES - 1:
            continue  # a text too small for distinct distractors
        label = rng.randrange(MC_CHOICES)
        choices = distractors[:label] + [gold] + distractors[label:]
        context = "\n".join([*lines[i - context_lines : i], prefix])
        items.append({"context": context, "choices": choices, "label": label, "offset": offsets[i - context_lines]})
    return items


def to_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def build(text: str) -> dict[str, str]:
    """File name -> JSONL content, from the whole corpus text."""
    val = validation_text(text)
    return {PPL_FILE: to_jsonl(perplexity_documents(val)), MC_FILE: to_jsonl(multiple_choice_items(val))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m temporal_eigenstate_networks.eval_tasks.build",
        description=__doc__.splitlines()[0],
        allow_abbrev=False,
    )
    parser.add_argument("--output_dir", type=Path, default=TASK_DIR, help="default: the package's task folder")
    parser.add_argument("--corpus", type=Path, help="a text file instead of the built-in Shakespeare corpus")
    parser.add_argument("--check", action="store_true", help="compare with the files there; write nothing")
    args = parser.parse_args(argv)
    if args.corpus is not None:
        text = args.corpus.read_text(encoding="utf-8")
    else:
        from ..data import load_shakespeare

        text = load_shakespeare()
    outputs = build(text)
    if args.check:
        stale = [name for name, content in outputs.items() if not (args.output_dir / name).is_file()
                 or (args.output_dir / name).read_text(encoding="utf-8") != content]  # fmt: skip
        for name in stale:
            print(f"{args.output_dir / name} differs from what the builder writes", file=sys.stderr)
        return 1 if stale else 0
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, content in outputs.items():
        atomic_write(args.output_dir / name, lambda tmp, text=content: tmp.write_text(text, encoding="utf-8"))
        print(f"wrote {args.output_dir / name}: {content.count(chr(10))} rows, {len(content.encode()):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
