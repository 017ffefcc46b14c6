"""Upper (and lower) bounds on everything one manifest row can ask for, in one place (DESIGN section 4).

Sized so that one row's artifacts fit a worker's memory and no row holds a GPU for hours, while real
use stays well inside them: a 50-megapixel photo, a few hundred frames, 20 prompts. Every bound is
checked by `stillmotion validate` and again by the run (a row failure naming the column and the limit).
Light module: plain constants, no imports.
"""

MAX_KEYFRAMES = 64  # key frames per segment (K)
MAX_FRAMES = 480  # output frames per segment (N): a minute at 8 fps
MAX_PROMPTS = 32  # segments of a schedule
MAX_VIDEO_FRAMES = 1201  # frames of a whole video, 1 + frames x prompts: ~0.95 GB of uint8 RGB at 512 px
MAX_VIDEO_KEYFRAMES = 256  # key frames of a whole video, keyframes x prompts (latents batched per segment)
MAX_STEPS = 1000  # DDIM steps (the scheduler's training steps)
MAX_TEXT_CHARS = 2000  # every text: prompts, caption, source_prompt, a direction template (77 tokens << this)
MAX_TEMPLATES = 64  # direction templates of a "sentences" edit direction
MAX_INJECT_LAYERS = 32  # UNet blocks feature injection may name
MIN_FPS, MAX_FPS = 1, 120
MAX_CANDIDATES = 16  # best of N

MAX_IMAGE_PIXELS = 100_000_000  # width x height of an input image (a 50 MP photo is fine)
MAX_IMAGE_ASPECT = 8.0  # long side / short side (a 6:1 panorama is fine; a 1x40000 strip is not)
MIN_IMAGE_SIDE = 16  # px: a smaller image is not scaled up into a video
