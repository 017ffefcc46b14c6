"""The video starts on the fitted input (issue 30): method.start_on_input."""

import numpy as np
import PIL.Image
import torch

from stillmotion.models import MethodParams
from stillmotion.models.images import pil_to_tensor
from stillmotion.models.insertion import decode_latents
from stillmotion.models.inversion import encode_latents
from stillmotion.models.method import Rendered, render_frames, start_on_input


def test_the_video_starts_on_the_input_through_the_vae_alone_and_keeps_its_key_frames(sd):
    side = sd.image_size
    image = PIL.Image.fromarray((np.random.default_rng(0).random((side, side, 3)) * 255).astype(np.uint8))
    generator = torch.Generator().manual_seed(0)
    keyframes = torch.randn(2, 4, 8, 8, generator=generator)
    rendered = Rendered(torch.randn(1, 4, 8, 8, generator=generator), keyframes, ["cut"])
    started = start_on_input(sd, rendered, image)
    with torch.no_grad():
        latent = encode_latents(sd.vae, pil_to_tensor(image))
    torch.testing.assert_close(started.source_latent, latent)  # the input's own latent, not x_T's
    assert torch.equal(started.keyframe_latents, keyframes) and started.truncated_prompts == ["cut"]
    params = MethodParams(keyframes=2, frames=4, insertion="spline")
    frames = render_frames(sd, started, params)
    with torch.no_grad():
        round_trip = decode_latents(sd.vae, latent)
    torch.testing.assert_close(frames[:1], round_trip)  # source.png: the input through the VAE alone
    # the frames after it run from the input's latent to the key frames (the last frame is the last key)
    with torch.no_grad():
        last = decode_latents(sd.vae, keyframes[-1:])
    torch.testing.assert_close(frames[-1:], last, atol=1e-5, rtol=0)
