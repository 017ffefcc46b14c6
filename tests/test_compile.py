"""torch.compile of the UNet: a bounded number of graphs per video, and the plain path's numbers."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from stillmotion.models import MethodParams, load_stable_diffusion
from stillmotion.models.method import render_keyframes, synthetic_noise


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    counters.clear()


def test_compiled_unet_graphs_do_not_grow_with_batch_sizes(tiny_model_dir, sd, fresh_dynamo):
    """Batch sizes, grad mode and attention-store mode vary per UNet call; new batch sizes add no graphs.

    The per-block compile (dynamic=False) recompiled every block for every shape and hit
    recompile_limit within one video, after which the blocks ran uncompiled.
    """
    fast = load_stable_diffusion(str(tiny_model_dir), device="cpu", dtype="fp32", compile_unet="eager")
    prompts = ["a blue car", "a green car"]
    x_t = synthetic_noise(sd, 3)
    graphs = []
    # UNet batches: reference 2, then guided 8 and 4 (with and without grad); then 6 and 4
    videos = [MethodParams(keyframes=3, batch_size=4), MethodParams(keyframes=4, batch_size=3)]
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for params in videos:
            params = MethodParams(**{**params.to_dict(), "steps": 3, "seed": 3, "xa_guidance": 100.0})
            plain = render_keyframes(sd, x_t, "a red car", prompts, params, synthetic=True)
            compiled = render_keyframes(fast, x_t, "a red car", prompts, params, synthetic=True)
            torch.testing.assert_close(compiled.keyframe_latents, plain.keyframe_latents, atol=1e-4, rtol=0)
            torch.testing.assert_close(compiled.source_latent, plain.source_latent, atol=1e-4, rtol=0)
            graphs.append(counters["stats"]["unique_graphs"])
    assert sum(counters["graph_break"].values()) == 0
    assert graphs[0] <= 3  # one per attention-store mode: record, guide (with grad), off
    assert graphs[1] == graphs[0]
