from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, over the whole tensor."""
    return float((actual - expected).abs().norm() / expected.abs().norm().clamp_min(1e-30))


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A small text corpus: enough windows of 32 bytes for the tiny training runs of the tests."""
    path = tmp_path / "corpus.txt"
    path.write_text("Now is the winter of our discontent made glorious summer by this sun of York.\n" * 60)
    return path
