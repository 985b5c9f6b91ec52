import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, over the whole tensor."""
    return float((actual - expected).abs().norm() / expected.abs().norm().clamp_min(1e-30))
