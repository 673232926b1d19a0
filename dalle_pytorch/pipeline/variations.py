"""Variations of an image: keep a share of its codes, resample the rest (`Pipeline.variations`).

    result = pipe.generate("a red circle on a blue background", num_images=1, seed=0)
    more = pipe.variations(result.codes[0], 4, 0.5, caption="a red circle on a blue background", seed=1)
    more = pipe.variations(Image.open("x.png"), 4, 0.25)      # pixels: encoded once by the VAE

Dimensions: I = F*F image codes in raster order (row by row from the top left).

strength is the share of the I codes that is resampled: round(strength * I) of them (Python's
round), the other codes are kept exactly.  Which ones:

- mode="suffix" (the default): the last ones in raster order, the bottom-right share of the picture.
  The transformer is causal, so every resampled code is conditioned on every kept code: the new
  part continues the kept part as the model would have.  It is priming (`num_init_img_tokens`).
- mode="random": a random set of code positions, drawn from `seed` (the same positions in every
  variation of a call).  The change is spread over the picture, but a resampled code sees only the
  kept codes before it in raster order (those after it are fixed later, whatever it became), so
  the kept and new codes fit less well together.  It is masked completion (`mask=` at the code
  grid's resolution).

strength 0 gives the image's own codes n times, nothing sampled; strength 1 samples freely from the
caption, exactly as `Pipeline.generate` with the same seed.  Nothing here imports the Pipeline (it
calls this module); this module plans, the Pipeline samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from PIL import Image

from dalle_pytorch.errors import GenerationError, setting
from dalle_pytorch.generation.decode import image_codes
from dalle_pytorch.pipeline.outputs import square_pixels

__all__ = ["VARIATION_MODES", "VariationPlan", "check_strength", "plan_variation", "source_codes"]

#: which codes a variation resamples (see the module docstring)
VARIATION_MODES = ("suffix", "random")


def check_strength(strength: Any, mode: Any = "suffix") -> float:
    """`strength` as a float in [0, 1] and `mode` one of VARIATION_MODES, or GenerationError in one line."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise GenerationError(f"{setting('strength')} must be a number in [0, 1] (the share of the codes resampled), "
                              f"got {strength!r}")
    if mode not in VARIATION_MODES:
        raise GenerationError(f"{setting('mode')} must be one of {', '.join(VARIATION_MODES)}, got {mode!r}")
    return float(strength)


def source_codes(model, image: Any) -> torch.Tensor:
    """The codes (1, I) of `image` on the model's device: a PIL image (centre-cropped and resized to the
    VAE's size, then encoded), pixels (c, H, W) or (1, c, H, W) in [0, 1] (encoded), or the integer codes
    (I,) or (1, I) of an earlier image (checked, not re-encoded).  GenerationError in one line otherwise."""
    device = next(model.parameters()).device
    seq_len = model.image_seq_len
    shapes = (f"{setting('image')} must be a PIL image, pixels (1, c, H, W) in [0, 1] or the codes ({seq_len},) / "
              f"(1, {seq_len}) of an earlier image")
    if isinstance(image, Image.Image):
        image = square_pixels(image, model.vae.image_size, model.vae.channels)
    elif isinstance(image, (list, tuple)):
        try:
            image = torch.tensor(image)
        except (TypeError, ValueError, RuntimeError):
            raise GenerationError(f"{shapes}; got a list that is not integers") from None
    if not isinstance(image, torch.Tensor):
        raise GenerationError(f"{shapes}, got {type(image).__name__}")
    if image.dtype == torch.bool or image.is_complex():
        raise GenerationError(f"{shapes}, got a {image.dtype} tensor")
    if image.dim() in (1, 3):
        image = image[None]
    if image.shape[0] != 1 or image.dim() not in (2, 4):
        raise GenerationError(f"{shapes}, got {tuple(image.shape)}")
    if image.dim() == 2 and (image.is_floating_point() or image.shape[1] != seq_len):
        raise GenerationError(f"{shapes}: codes are {seq_len} integers, got {tuple(image.shape)} {image.dtype}")
    if image.dim() == 4:
        weight = next(model.vae.parameters(), None)
        image = image.to(device=device, dtype=torch.float32 if weight is None else weight.dtype)
    try:
        return image_codes(model, image.to(device), 1)
    except ValueError as e:  # a shape or range the model cannot take
        raise GenerationError(f"{setting('image')}: {e}") from None


@dataclass
class VariationPlan:
    """Which codes of `codes` (1, I) a variation keeps: keep (I,) bool, `kept` of them; the rest resampled."""

    codes: torch.Tensor
    keep: torch.Tensor
    strength: float
    mode: str
    mask_seed: Optional[int] = None  # mode="random": the seed the positions were drawn with

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    def generate_args(self, fmap_size: int) -> dict:
        """The `Pipeline.generate` arguments that keep these codes ({} : nothing kept, free sampling)."""
        if self.kept == 0:
            return {}
        if self.mode == "suffix":
            return {"img": self.codes, "num_init_img_tokens": self.kept}
        return {"img": self.codes, "mask": self.keep.view(fmap_size, fmap_size)}

    def settings(self) -> dict:
        """What generation.json, the PNG chunks and the server record of the variation."""
        out = {"strength": self.strength, "mode": self.mode, "kept_codes": self.kept,
               "resampled_codes": self.keep.numel() - self.kept}
        if self.mask_seed is not None:
            out["mask_seed"] = self.mask_seed
        return out


def plan_variation(codes: torch.Tensor, strength: float, mode: str = "suffix", seed: int = 0) -> VariationPlan:
    """The plan for variations of `codes` (1, I): round(strength * I) codes resampled, the last ones in
    raster order ("suffix") or a random set of positions drawn from a CPU generator seeded `seed` ("random")."""
    strength = check_strength(strength, mode)
    n = codes.shape[-1]
    resampled = round(strength * n)
    keep = torch.zeros(n, dtype=torch.bool)
    if mode == "suffix":
        keep[: n - resampled] = True
        return VariationPlan(codes, keep, strength, mode)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    keep[order[resampled:]] = True
    return VariationPlan(codes, keep, strength, mode, mask_seed=seed)
