"""The `ten` command. Every subcommand's arguments live here; the work lives in the library."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import TemporalEigenstateConfig, TemporalEigenstateNetwork


class UserError(Exception):
    """A mistake in what the user asked for: reported in one line, exit code 2."""


def cmd_demo(args: argparse.Namespace) -> None:
    """Build a small TEN, score real text with it, stream it, and generate."""
    from .data import ByteTokenizer, WindowSampler, load_corpus, split_train_val

    torch.manual_seed(args.seed)
    tokenizer = ByteTokenizer()
    text = load_corpus(args.dataset)
    train, val = split_train_val(tokenizer.encode(text))
    print(f"corpus {args.dataset!r}: {len(text):,} bytes, {len(train):,} train / {len(val):,} validation tokens")

    config = TemporalEigenstateConfig(
        vocab_size=tokenizer.vocab_size,
        d_model=128,
        n_layers=2,
        num_eigenstates=32,
        max_seq_len=256,
        use_hten=args.use_hten,
        hten_scales=[1, 2, 4, 8],
    )
    model = TemporalEigenstateNetwork(config)
    print(model.summary())

    inputs, targets = WindowSampler(val, seq_len=256, batch_size=4, seed=args.seed).next_batch()
    start = time.perf_counter()
    out = model.compute_loss(inputs, targets, return_dict=True)
    out["loss"].backward()
    seconds = time.perf_counter() - start
    print(
        f"untrained loss on 4 validation windows: ce {out['ce_loss']:.4f} nats/byte (ln 256 = 5.5452), "
        f"energy {out['energy_loss']:.4f}, total {out['loss']:.4f}; forward+backward {seconds:.2f} s"
    )
    prompt = torch.tensor(tokenizer.encode(args.prompt), dtype=torch.long).unsqueeze(0)
    sample = model.generate(prompt, max_new_tokens=args.max_new_tokens, temperature=0.8, top_k=50, seed=args.seed)
    print(f"sample from the untrained model (noise until trained):\n{tokenizer.decode(sample[0])!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ten", description="Temporal Eigenstate Networks")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="build a model, compute its loss on real text, generate")
    demo.add_argument("--dataset", default="shakespeare", help="'shakespeare' or a text file or folder")
    demo.add_argument("--use_hten", action="store_true")
    demo.add_argument("--prompt", default="ROMEO.")
    demo.add_argument("--max_new_tokens", type=int, default=80)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data import DataError

    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (UserError, DataError, ValueError, FileNotFoundError) as err:
        print(f"ten {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ten {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
