"""Seeds read against their noise: interpolation on the curves, common budgets, verdicts."""

import pytest

from temporal_eigenstate_networks.experiments.spread import markdown, plot, summarize, value_at, verdict
from temporal_eigenstate_networks.units import duration_text, tokens_text


def curve(points):
    return [{"tokens": t, "elapsed_s": s, "val_ce": ce} for t, s, ce in points]


def test_value_at_interpolates_between_evaluations():
    c = curve([(0, 0.0, 5.0), (100, 10.0, 3.0), (200, 20.0, 2.0)])
    assert value_at(c, "tokens", 50) == pytest.approx(4.0)
    assert value_at(c, "elapsed_s", 15.0) == pytest.approx(2.5)
    assert value_at(c, "tokens", 200) == 2.0
    with pytest.raises(ValueError, match="no evaluation"):
        value_at([], "tokens", 1)


def test_summarize_reads_every_run_at_the_shortest_budget():
    rows = [
        {"variant": "full", "seed": 0, "parameters": 10, "tokens_per_s": 100.0,
         "curve": curve([(0, 0, 5.0), (200, 20, 2.0)])},
        {"variant": "full", "seed": 1, "parameters": 10, "tokens_per_s": 300.0,
         "curve": curve([(0, 0, 5.0), (200, 10, 3.0)])},
        {"variant": "no-gate", "seed": 0, "parameters": 8, "tokens_per_s": 50.0,
         "curve": curve([(0, 0, 5.0), (100, 40, 4.0)])},
    ]  # fmt: skip
    summary = summarize(rows)
    assert summary["tokens"] == 100 and summary["seconds"] == 10
    full = summary["variants"]["full"]
    assert full["seeds"] == [0, 1] and full["tokens_per_s"] == 200.0
    assert full["equal_tokens"]["values"] == pytest.approx([3.5, 4.0])  # halfway to 200 tokens
    assert full["equal_time"]["values"] == pytest.approx([3.5, 3.0])
    assert full["equal_tokens"]["min"] == pytest.approx(3.5) and full["equal_tokens"]["max"] == pytest.approx(4.0)
    assert summary["variants"]["no-gate"]["equal_time"]["values"] == pytest.approx([4.75])
    table = markdown(summary, "full")
    assert "| no-gate | 0.00 M | 1 |" in table and "16.7" in table


def test_a_verdict_needs_the_seed_ranges_apart_and_says_which_way():
    ref = {"mean": 2.0, "min": 1.9, "max": 2.1}
    worse, overlapping = {"mean": 2.5, "min": 2.4, "max": 2.6}, {"mean": 2.05, "min": 2.0, "max": 2.2}
    assert verdict(overlapping, ref, 0.1) == "cannot be told from noise"
    assert verdict(worse, ref, 0.1) == "holds here"  # the paper says it hurts, and it does
    assert verdict(worse, ref, -0.05) == "does not hold here"  # the paper says it helps
    assert verdict(worse, ref, None) == "apart from noise"
    assert verdict({**worse, "values": [2.5, 2.6]}, {**ref, "values": [2.0, 2.1, 1.9]}, 0.1) == "2 seeds: no verdict"


def test_the_seeds_plot_draws_every_variant_even_a_single_seed(tmp_path):
    rows = [
        {"variant": "full", "seed": s, "parameters": 10, "tokens_per_s": 1.0,
         "curve": curve([(100, 1, 3.0 + s), (200, 2, 2.0 + s)])} for s in (0, 1)
    ]  # fmt: skip
    rows.append({"variant": "k32", "seed": 0, "parameters": 9, "tokens_per_s": 1.0, "curve": curve([(100, 1, 3.5)])})
    plot(rows, "full", tmp_path / "seeds.png")
    assert (tmp_path / "seeds.png").read_bytes().startswith(b"\x89PNG")


def test_one_seed_shows_its_value_without_a_spread_and_small_runs_keep_their_size():
    rows = [
        {"variant": "full", "seed": 0, "parameters": 10, "tokens_per_s": 100.0,
         "curve": curve([(0, 0, 5.0), (4096, 20, 2.0)])},
        {"variant": "full", "seed": 1, "parameters": 10, "tokens_per_s": 100.0,
         "curve": curve([(0, 0, 5.0), (4096, 20, 3.0)])},
        {"variant": "no-gate", "seed": 0, "parameters": 8, "tokens_per_s": 50.0,
         "curve": curve([(0, 0, 5.0), (4096, 20, 4.0)])},
    ]  # fmt: skip
    table = markdown(summarize(rows), "full")
    assert "at 4,096 tokens and at 20 s" in table  # not "0.00 M tokens" and "0.3 min"
    full, no_gate = (line for line in table.splitlines() if line.startswith(("| full", "| no-gate")))
    assert "2.5000 ± 0.7071 (2.0000..3.0000)" in full
    assert "| 1 | 4.0000 |" in no_gate and "±" not in no_gate


@pytest.mark.parametrize(
    ("tokens", "seconds", "text"),
    [(512, 5.4, "512 tokens in 5 s"), (12_288, 42.0, "0.0123 M tokens in 42 s"),
     (1_310_720, 168.0, "1.31 M tokens in 2.8 min")],
)  # fmt: skip
def test_units_keep_a_small_run_from_reading_as_nothing(tokens, seconds, text):
    assert f"{tokens_text(tokens)} tokens in {duration_text(seconds)}" == text
