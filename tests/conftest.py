import os
from pathlib import Path

# Triton's interpreter runs the fused kernels on CPU tensors; it must be on before they are defined.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


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
