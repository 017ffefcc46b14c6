"""Method parameters: one frozen dataclass, defaults in one place (pix2pix-zero's where it has them)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..limits import (
    MAX_CANDIDATES,
    MAX_FPS,
    MAX_FRAMES,
    MAX_INJECT_LAYERS,
    MAX_KEYFRAMES,
    MAX_STEPS,
    MAX_TEMPLATES,
    MAX_TEXT_CHARS,
    MIN_FPS,
)

Curve = Literal["log", "linear"]
CrossFrame = Literal["off", "replace", "extend", "maps"]
Insertion = Literal["spline", "adaptive", "motion"]
INSERTIONS = ("spline", "adaptive", "motion")
Direction = Literal["prompt", "sentences"]
Inbetween = Literal["embedding", "latent"]
XaSchedule = Literal["constant", "linear"]
Negative = Literal["caption", "empty", "neutral"]
InjectMode = Literal["replace", "layout"]
# the sentences a "sentences" edit direction substitutes the changed word into, when neither the user nor
# the model folder gives its own (pix2pix-zero averages ~1,000 generated sentences per word; these are
# a short, generic stand-in for nouns)
DEFAULT_DIRECTION_TEMPLATES = (
    "a photo of a {}",
    "a picture of a {}",
    "a painting of a {}",
    "a close-up photo of a {}",
    "a blurry photo of a {}",
    "a drawing of a {}",
    "a rendering of a {}",
    "a cropped photo of a {}",
    "an image of a {}",
    "a photo of the {}",
    "a {} in the scene",
    "a good photo of a {}",
)

DEFAULT_XA_GUIDANCE_REAL = 0.1
DEFAULT_XA_GUIDANCE_SYNTHETIC = 0.15
DEFAULT_CFG_SCALE = 5.0
DEFAULT_STEPS = 50
# Plug-and-Play's feature-injection layer: the decoder's 4th layer, the second ResNet block of Stable
# Diffusion's second up block (a UNet of the same layout, the toy model's, has a layer of that name too)
DEFAULT_INJECT_LAYERS = ("up_blocks.1.resnets.1",)
# the model defaults that are words, not numbers
WORD_DEFAULTS = ("cross_frame", "direction", "xa_schedule", "inbetween", "negative", "inject_mode")
MODEL_DEFAULTS_FILE = "stillmotion.json"  # beside model_index.json: the model's own method defaults

# The fields of a resolved MethodParams each cached stage reads: a stage's key is the hash of exactly these
# (with its inputs' keys), so a field changes the keys of the stages that read it and of no other
# (tests/test_keys.py changes every field one at a time). A field no stage reads is an execution option.
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "invert": ("steps", "seed", "reg_steps", "auto_corr_rolls", "lambda_auto_corr", "lambda_kl", "encode"),
    "keyframes": (
        "seed",  # synthetic x_T, and best-of-N's candidate seeds
        "keyframes",
        "steps",
        "cfg_scale",
        "xa_guidance",
        "curve",
        "candidates",
        "cross_frame",
        "direction",
        "direction_templates",
        "xa_until",
        "xa_schedule",
        "inbetween",
        "negative",
        "negative_until",
        "negative_from",
        "edit_from",
        "inject_features",
        "inject_layers",
        "inject_mode",
    ),
    "frames": ("keyframes", "frames", "insertion"),
    "encode": ("fps",),
    "scores": ("frames",),
}
EXECUTION_FIELDS = ("batch_size",)  # memory knobs: never the numbers, in no key and no fingerprint


@dataclass(frozen=True)
class MethodParams:
    """Everything that changes the numbers of one video (besides the image, prompts and model)."""

    keyframes: int = 6  # key frames per segment (K)
    frames: int | None = None  # output frames per segment (N); None means 4 * keyframes
    fps: int = 8  # frames per second of the MP4
    seed: int = 0  # seeds x_T (synthetic), the VAE sample and the regularizer's roll offsets
    # DDIM steps for inversion, reference and key frames; None: the model's (50 for Stable Diffusion). The
    # guidance step is per DDIM step, so a model's guidance default holds at its own step count only
    steps: int | None = None
    cfg_scale: float | None = None  # CFG scale of reference and key frames; 1: CFG off; None: the model's
    xa_guidance: float | None = None  # cross-attention guidance step; None: the model's default for the mode
    curve: Curve = "log"  # edit-weight curve: ln(1 + k(e-1)/K) or k/K
    # frames between key frames: the latent spline at even times, re-timed by the distance its decoded
    # frames travel (adaptive: the default, benchmarks/RESULTS.md 2026-12-03: worst step 1.47x the mean
    # instead of 2.78x, structure better), or motion-compensated in-betweens (ffmpeg minterpolate)
    insertion: Insertion = "adaptive"
    candidates: int = 1  # best of N: key frames rendered N ways (see models/candidates.py), the best kept
    # regularized inversion (pix2pix-zero's defaults)
    # outer regularization iterations per inversion step (0: plain DDIM inversion); None: the model's (5 for
    # Stable Diffusion); a model default only, not a column or flag
    reg_steps: int | None = None
    auto_corr_rolls: int = 5  # auto-correlation pyramid steps per outer iteration
    lambda_auto_corr: float = 20.0  # weight of the auto-correlation gradient
    lambda_kl: float = 20.0  # weight of the KL-to-N(0,1) gradient
    encode: Literal["mean", "sample"] = "mean"  # VAE encode: latent mean or a seeded sample
    batch_size: int = 8  # key frames per UNet batch (memory knob; does not change results)
    # key frames' self-attention attends to the reference pass's keys/values: off, replace or extend
    cross_frame: CrossFrame | None = None  # None: the model's default (off for Stable Diffusion)
    # edit direction: "prompt" (E(prompt) - E(caption)) or "sentences" (pix2pix-zero's: the mean embedding
    # of sentences with the prompt's word minus that of sentences with the caption's word, the sentences
    # being `direction_templates` with the one word that differs substituted); None: the model's
    direction: Direction | None = None
    direction_templates: tuple[str, ...] | None = None  # "{}" marks the word; None: the model's or generic
    # cross-attention guidance schedule: on for the first `xa_until` of the steps, at a constant step or
    # decaying linearly to 0 there; None: the model's (1.0, constant: every step, as pix2pix-zero)
    xa_until: float | None = None
    xa_schedule: XaSchedule | None = None
    # the key frames between a segment's ends: denoised from edited embeddings ("embedding"), or
    # interpolated in latent space between the previous anchor and the segment's last key frame, which
    # alone is denoised ("latent"); None: the model's ("embedding")
    inbetween: Inbetween | None = None
    # real mode's CFG negative for the key frames: the caption (pix2pix-zero: CFG then extrapolates along
    # the edit direction, eps_c + s (eps_edit - eps_c)), the empty prompt (plain CFG towards the edited
    # embedding) or "neutral": the caption less the words the prompts change (CFG towards the new words
    # alone, method.neutral_caption); the reference pass stays the caption's conditional prediction either
    # way. None: the model's ("caption"). Synthetic mode always uses the empty prompt.
    negative: Negative | None = None
    # "empty" or "neutral" for the first fraction of the steps, the caption after
    negative_until: float | None = None
    # ... and from this fraction of the steps on: that negative on [negative_from, negative_until), the
    # caption outside; None: the model's (0). 0.8 with negative_until 1: the caption's extrapolation away
    # from the source for the first 80% of the steps, CFG towards the edit after, so the edit stops at its
    # target instead of running past it
    negative_from: float | None = None
    # the key frames follow the reference pass (the caption, unedited) for this fraction of the steps and
    # branch from its latent after; None: the model's (0: they branch from x_T, as pix2pix-zero)
    edit_from: float | None = None
    # Plug-and-Play's feature injection: for this fraction of the steps the key frames take the reference
    # pass's output of `inject_layers` (ResNet blocks) in place of their own, so the source frame fixes the
    # layout and the edited text the appearance; None: the model's (0: off, as pix2pix-zero)
    inject_features: float | None = None
    inject_layers: tuple[str, ...] | None = None  # None: the model's, else DEFAULT_INJECT_LAYERS
    # what the key frames take: the source's features themselves ("replace", Plug-and-Play), or their layout
    # alone ("layout": less their mean over the image, plus the key frame's own mean, channel by channel,
    # so the source's colour does not hold a colour edit back); None: the model's ("replace")
    inject_mode: InjectMode | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.keyframes <= MAX_KEYFRAMES:
            raise ValueError(f"keyframes must be in 1..{MAX_KEYFRAMES}, got {self.keyframes}")
        if self.frames is not None and not self.keyframes <= self.frames <= MAX_FRAMES:
            raise ValueError(
                f"frames must be in keyframes..{MAX_FRAMES} (keyframes: {self.keyframes}), got {self.frames}"
            )
        if not MIN_FPS <= self.fps <= MAX_FPS:
            raise ValueError(f"fps must be in {MIN_FPS}..{MAX_FPS}, got {self.fps}")
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be in 1..{MAX_STEPS}, got {self.steps}")
        if self.reg_steps is not None and not 0 <= self.reg_steps <= MAX_STEPS:
            raise ValueError(f"reg_steps must be in 0..{MAX_STEPS}, got {self.reg_steps}")
        if self.xa_guidance is not None and not (self.xa_guidance >= 0 and self.xa_guidance != float("inf")):
            raise ValueError(f"xa_guidance must be finite and >= 0, got {self.xa_guidance}")
        if self.curve not in ("log", "linear"):
            raise ValueError(f"curve must be 'log' or 'linear', got {self.curve!r}")
        if not 1 <= self.candidates <= MAX_CANDIDATES:
            raise ValueError(f"candidates must be in 1..{MAX_CANDIDATES}, got {self.candidates}")
        if self.insertion not in INSERTIONS:
            raise ValueError(f"insertion must be one of {', '.join(INSERTIONS)}, got {self.insertion!r}")
        if self.cfg_scale is not None and not (1 <= self.cfg_scale < float("inf")):
            raise ValueError(
                f"cfg_scale must be a finite number >= 1 (1 turns classifier-free guidance off, "
                f"as in pix2pix-zero), got {self.cfg_scale}"
            )
        if self.cross_frame not in (None, "off", "replace", "extend", "maps"):
            choices = "'off', 'replace', 'extend' or 'maps'"
            raise ValueError(f"cross_frame must be {choices}, got {self.cross_frame!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.direction not in (None, "prompt", "sentences"):
            raise ValueError(f"direction must be 'prompt' or 'sentences', got {self.direction!r}")
        if self.direction_templates is not None and not (
            self.direction_templates and all(t.count("{}") == 1 for t in self.direction_templates)
        ):
            raise ValueError("direction_templates must be sentences with one '{}' each")
        if self.direction_templates is not None and len(self.direction_templates) > MAX_TEMPLATES:
            raise ValueError(
                f"direction_templates: at most {MAX_TEMPLATES}, got {len(self.direction_templates)}"
            )
        if self.direction_templates is not None and max(map(len, self.direction_templates)) > MAX_TEXT_CHARS:
            raise ValueError(f"direction_templates: a template is longer than {MAX_TEXT_CHARS} characters")
        if self.xa_until is not None and not 0 < self.xa_until <= 1:
            raise ValueError(f"xa_until must be in (0, 1], got {self.xa_until}")
        if self.xa_schedule not in (None, "constant", "linear"):
            raise ValueError(f"xa_schedule must be 'constant' or 'linear', got {self.xa_schedule!r}")
        if self.negative not in (None, "caption", "empty", "neutral"):
            raise ValueError(f"negative must be 'caption', 'empty' or 'neutral', got {self.negative!r}")
        if self.negative_until is not None and not 0 < self.negative_until <= 1:
            raise ValueError(f"negative_until must be in (0, 1], got {self.negative_until}")
        if self.negative_from is not None and not 0 <= self.negative_from < 1:
            raise ValueError(f"negative_from must be in [0, 1), got {self.negative_from}")
        if self.negative_from is not None and self.own_negative_until <= self.negative_from:
            raise ValueError(
                f"negative_from ({self.negative_from}) must be below negative_until "
                f"({self.own_negative_until})"
            )
        if self.edit_from is not None and not 0 <= self.edit_from < 1:
            raise ValueError(f"edit_from must be in [0, 1), got {self.edit_from}")
        if self.inject_features is not None and not 0 <= self.inject_features <= 1:
            raise ValueError(f"inject_features must be in [0, 1], got {self.inject_features}")
        if self.inject_layers is not None and not (
            self.inject_layers and all(isinstance(name, str) and name for name in self.inject_layers)
        ):
            raise ValueError("inject_layers must be UNet module names, e.g. up_blocks.1.resnets.1")
        if self.inject_layers is not None and (
            len(self.inject_layers) > MAX_INJECT_LAYERS or max(map(len, self.inject_layers)) > MAX_TEXT_CHARS
        ):
            raise ValueError(f"inject_layers: at most {MAX_INJECT_LAYERS} names of a UNet's modules")
        if self.inbetween not in (None, "embedding", "latent"):
            raise ValueError(f"inbetween must be 'embedding' or 'latent', got {self.inbetween!r}")
        if self.inject_mode not in (None, "replace", "layout"):
            raise ValueError(f"inject_mode must be 'replace' or 'layout', got {self.inject_mode!r}")

    @property
    def frames_per_segment(self) -> int:
        return self.frames if self.frames is not None else 4 * self.keyframes

    def guidance_for(self, synthetic: bool) -> float:
        """The cross-attention guidance step: the user's, else pix2pix-zero's default for the mode (see
        `resolve` for a model's own defaults)."""
        if self.xa_guidance is not None:
            return self.xa_guidance
        return DEFAULT_XA_GUIDANCE_SYNTHETIC if synthetic else DEFAULT_XA_GUIDANCE_REAL

    @property
    def ddim_steps(self) -> int:
        """The DDIM steps: the user's, else pix2pix-zero's 50 (see `resolve` for a model's own)."""
        return DEFAULT_STEPS if self.steps is None else self.steps

    @property
    def cross(self) -> CrossFrame:
        """Cross-frame attention: the user's, else off (see `resolve` for a model's own)."""
        return self.cross_frame or "off"

    @property
    def cfg(self) -> float:
        """The CFG scale: the user's, else pix2pix-zero's (see `resolve` for a model's own)."""
        return DEFAULT_CFG_SCALE if self.cfg_scale is None else self.cfg_scale

    @property
    def edit_direction(self) -> Direction:
        return self.direction or "prompt"

    @property
    def templates(self) -> tuple[str, ...]:
        return self.direction_templates or DEFAULT_DIRECTION_TEMPLATES

    @property
    def guidance_until(self) -> float:
        return 1.0 if self.xa_until is None else self.xa_until

    @property
    def guidance_schedule(self) -> XaSchedule:
        return self.xa_schedule or "constant"

    @property
    def edit_from_share(self) -> float:
        """The share of the steps the key frames take as the reference: the user's, else 0 (see `resolve`)."""
        return 0.0 if self.edit_from is None else self.edit_from

    @property
    def regularization_steps(self) -> int:
        """The inversion's regularization iterations per step: the resolved value (the model's), else
        pix2pix-zero's 5 (see `resolve`)."""
        return ModelDefaults.reg_steps if self.reg_steps is None else self.reg_steps

    @property
    def injection_share(self) -> float:
        """The share of the steps with feature injection: the user's, else 0 (see `resolve`)."""
        return 0.0 if self.inject_features is None else self.inject_features

    @property
    def injection_layers(self) -> tuple[str, ...]:
        return self.inject_layers or DEFAULT_INJECT_LAYERS

    @property
    def injection_mode(self) -> InjectMode:
        return self.inject_mode or "replace"

    def loop_options(self) -> dict:
        """The `guided_keyframes` keywords these parameters set (besides steps, CFG and guidance)."""
        return {
            "cross_frame": self.cross,
            "guidance_until": self.guidance_until,
            "guidance_schedule": self.guidance_schedule,
            "negative_until": self.own_negative_until,
            "negative_from": self.own_negative_from,
            "edit_from": self.edit_from_share,
            "inject_features": self.injection_share,
            "inject_layers": self.injection_layers,
            "inject_mode": self.injection_mode,
        }

    @property
    def inbetween_mode(self) -> Inbetween:
        return self.inbetween or "embedding"

    @property
    def negative_prompt(self) -> Negative:
        return self.negative or "caption"

    @property
    def own_negative_until(self) -> float:
        """The end of the window on which the key frames take their own negative ("empty", "neutral")."""
        return 1.0 if self.negative_until is None else self.negative_until

    @property
    def own_negative_from(self) -> float:
        return 0.0 if self.negative_from is None else self.negative_from

    def keyframe_options(self) -> dict:
        """The key-frame options that differ from the method's defaults (for reports; cache keys hash every
        field a stage reads, see `stage_fields`)."""
        options = {
            "direction": (self.edit_direction, "prompt"),
            "xa_until": (self.guidance_until, 1.0),
            "xa_schedule": (self.guidance_schedule, "constant"),
            "inbetween": (self.inbetween_mode, "embedding"),
            "negative": (self.negative_prompt, "caption"),
            "edit_from": (self.edit_from_share, 0.0),
            "inject_features": (self.injection_share, 0.0),
        }
        changed = {name: value for name, (value, default) in options.items() if value != default}
        if self.negative_prompt != "caption" and self.own_negative_until != 1.0:
            changed["negative_until"] = self.own_negative_until
        if self.negative_prompt != "caption" and self.own_negative_from != 0.0:
            changed["negative_from"] = self.own_negative_from
        if self.edit_direction == "sentences":
            changed["direction_templates"] = list(self.templates)
        if self.injection_share:
            changed["inject_layers"] = list(self.injection_layers)
            if self.injection_mode != "replace":
                changed["inject_mode"] = self.injection_mode
        return changed

    def resolve(self, defaults: ModelDefaults, synthetic: bool) -> tuple[MethodParams, dict[str, str]]:
        """These parameters with every model-specific value made concrete: a value given (command line,
        manifest) wins, else the model's own default, else pix2pix-zero's. Returns them and where each
        came from ("given", "model" or "default": pix2pix-zero's, cross-frame off), for metadata.json."""
        values, sources = {}, {}
        mode = "synthetic" if synthetic else "real"
        xa = f"xa_guidance_{mode}"
        for name, given, default in (
            ("steps", self.steps, "steps"),
            ("cfg_scale", self.cfg_scale, defaults.cfg_scale_for(synthetic)),
            ("xa_guidance", self.xa_guidance, xa),
            ("cross_frame", self.cross_frame, "cross_frame"),
            ("direction", self.direction, "direction"),
            ("direction_templates", self.direction_templates, "direction_templates"),
            ("xa_until", self.xa_until, "xa_until"),
            ("xa_schedule", self.xa_schedule, "xa_schedule"),
            ("inbetween", self.inbetween, "inbetween"),
            ("negative", self.negative, "negative"),
            ("negative_until", self.negative_until, "negative_until"),
            ("negative_from", self.negative_from, "negative_from"),
            ("edit_from", self.edit_from, "edit_from"),
            ("inject_features", self.inject_features, f"inject_features_{mode}"),
            ("inject_layers", self.inject_layers, "inject_layers"),
            ("inject_mode", self.inject_mode, "inject_mode"),
            ("reg_steps", self.reg_steps, "reg_steps"),
        ):
            values[name] = given if given is not None else getattr(defaults, default)
            source = "given" if given is not None else defaults.source_of(default)
            if name in ("cfg_scale", "xa_guidance", "cross_frame") or source != "default":
                sources[name] = source  # the edit options appear only when not left at the method's
        if self.negative_from is not None or self.negative_until is not None:
            # the empty negative's window is given as a whole: a bound not given is the method's, not the
            # model's (a model's 0.8 to 1 and a given until 0.5 would be no window at all)
            for name in ("negative_from", "negative_until"):
                if getattr(self, name) is None:
                    values[name] = getattr(ModelDefaults, name)
                    sources.pop(name, None)
        values["frames"] = self.frames_per_segment
        return dataclasses.replace(self, **values), sources

    def stage_fields(self, stage: str) -> dict:
        """The values of the fields `stage` reads (STAGE_FIELDS), for its cache key; only on resolved
        parameters (`resolve`), so a model's default and the same value given key alike."""
        values = {name: getattr(self, name) for name in STAGE_FIELDS[stage]}
        unresolved = sorted(name for name, value in values.items() if value is None)
        if unresolved:
            raise ValueError(f"unresolved method parameters {unresolved}: call MethodParams.resolve first")
        return {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}

    def fingerprint_fields(self) -> dict:
        """Every field that can change a video (all but EXECUTION_FIELDS), for the row fingerprint."""
        values = {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}
        return {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelDefaults:
    """The method values that depend on the model, and where they came from. Stable Diffusion keeps
    pix2pix-zero's; a model folder may carry its own in MODEL_DEFAULTS_FILE:

        {"method_defaults": {"steps": 25, "xa_guidance_real": 8.5, "edit_from": 0.1}}
    """

    xa_guidance_real: float = DEFAULT_XA_GUIDANCE_REAL
    xa_guidance_synthetic: float = DEFAULT_XA_GUIDANCE_SYNTHETIC
    cfg_scale: float = DEFAULT_CFG_SCALE
    cfg_scale_synthetic: float | None = None  # synthetic mode's CFG scale where it differs; None: cfg_scale
    steps: int = DEFAULT_STEPS
    cross_frame: str = "off"
    direction: str = "prompt"
    direction_templates: tuple[str, ...] = DEFAULT_DIRECTION_TEMPLATES
    xa_until: float = 1.0
    xa_schedule: str = "constant"
    inbetween: str = "embedding"
    negative: str = "caption"
    negative_until: float = 1.0
    negative_from: float = 0.0
    edit_from: float = 0.0
    inject_features_real: float = 0.0  # feature injection's share of the steps, per mode as the guidance
    inject_features_synthetic: float = 0.0
    inject_layers: tuple[str, ...] = DEFAULT_INJECT_LAYERS
    inject_mode: str = "replace"
    reg_steps: int = 5  # the inversion's regularization iterations per step (pix2pix-zero's 5)
    from_model: frozenset[str] = frozenset()  # the names the model folder set

    def source_of(self, name: str) -> str:
        return "model" if name in self.from_model else "default"

    def cfg_scale_for(self, synthetic: bool) -> str:
        """The name of the mode's CFG default: "cfg_scale_synthetic" where the model sets one, else
        "cfg_scale"."""
        return "cfg_scale_synthetic" if synthetic and self.cfg_scale_synthetic is not None else "cfg_scale"

    @classmethod
    def of_folder(cls, folder: str | Path) -> ModelDefaults:
        """The defaults a model folder carries (pix2pix-zero's for any value it does not set)."""
        path = Path(folder) / MODEL_DEFAULTS_FILE
        if not path.is_file():
            return cls()
        try:
            values = json.loads(path.read_text())["method_defaults"]
            if not isinstance(values, dict):
                raise TypeError("method_defaults is not an object")
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a stillmotion model defaults file ({error})") from None
        known = {f.name for f in dataclasses.fields(cls)} - {"from_model"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown method defaults {unknown}; known: {sorted(known)}")
        try:
            typed = {
                name: value
                if name in WORD_DEFAULTS
                else _strings(value)
                if name in ("direction_templates", "inject_layers")
                else _whole(name, value)
                if name in ("steps", "reg_steps")
                else float(value)
                for name, value in values.items()
            }
            defaults = cls(**typed, from_model=frozenset(values))
            # the same checks as a value given by a user
            MethodParams(
                cfg_scale=defaults.cfg_scale,
                xa_guidance=defaults.xa_guidance_real,
                steps=defaults.steps,
                reg_steps=defaults.reg_steps,
            )
            MethodParams(xa_guidance=defaults.xa_guidance_synthetic, cross_frame=defaults.cross_frame)
            MethodParams(
                direction=defaults.direction,
                direction_templates=defaults.direction_templates,
                xa_until=defaults.xa_until,
                xa_schedule=defaults.xa_schedule,
                inbetween=defaults.inbetween,
                negative=defaults.negative,
                negative_until=defaults.negative_until,
                negative_from=defaults.negative_from,
                edit_from=defaults.edit_from,
                inject_features=defaults.inject_features_real,
                inject_layers=defaults.inject_layers,
                inject_mode=defaults.inject_mode,
            )
            MethodParams(
                inject_features=defaults.inject_features_synthetic, cfg_scale=defaults.cfg_scale_synthetic
            )
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: {error}") from None
        return defaults


def _strings(value) -> tuple:
    """A list of strings from JSON as a tuple; one string alone as a tuple of it (not of its letters)."""
    return (value,) if isinstance(value, str) else tuple(value)


def _whole(name: str, value) -> int:
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)
