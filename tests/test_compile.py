"""`--compile`: the training step through torch.compile (inductor, on the CPU here) trains like eager.

The scan stays opaque to the compiler (ten.ops.scan is a graph break), everything around it is
compiled. Compilation takes tens of seconds per model on 2 cores, so the models are tiny and the
runs 3 steps long.
"""

import pytest
import torch

from ten.training import Trainer

from .test_runs import weights
from .test_training import records, tiny_arguments

VARIANTS = {"ten": {}, "hten": {"use_hten": True, "hten_scales": [1, 2]},
            "transformer": {"model": "transformer", "num_eigenstates": None}}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compiled_training_matches_eager(corpus, tmp_path, variant):
    losses, final = {}, {}
    for compiled in (False, True):
        output = tmp_path / f"compiled-{compiled}"
        args = tiny_arguments(corpus, output, max_steps=3, compile=compiled, **VARIANTS[variant])
        trainer = Trainer(args)
        assert isinstance(trainer.objective, torch._dynamo.eval_frame.OptimizedModule) == compiled
        trainer.train()
        losses[compiled] = [r["loss"] for r in records(output) if r["event"] == "train"]
        final[compiled] = weights(output / "checkpoints" / "final")
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    for name, value in final[False].items():
        torch.testing.assert_close(final[True][name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_compilation_is_on_cuda_only_unless_asked(corpus, tmp_path):
    trainer = Trainer(tiny_arguments(corpus, tmp_path / "run", max_steps=1, device="cpu"))
    assert trainer.objective is not None and not isinstance(trainer.objective, torch._dynamo.eval_frame.OptimizedModule)
