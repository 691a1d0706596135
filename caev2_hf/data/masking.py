"""Training masks for CAE v2 (docs/method.md#masking): block-wise (BEiT style, the default) and uniformly random.

Every mask has exactly the requested number of masked patches, because the encoder gathers the same number of
visible patches for every image of a batch (docs/method.md#encoder). Randomness always comes from an explicit numpy Generator, so
a resumed run that replays the data stream redraws the same masks.
"""

import math
from typing import TYPE_CHECKING

import numpy as np

from ..configuration_caev2 import check_num_masking_patches


if TYPE_CHECKING:
    from caev2_hf_cli.pretraining import PretrainingDataArguments


def _validate_grid_and_count(grid_size: tuple[int, int], num_masking_patches: int) -> tuple[int, int]:
    """Checks the patch grid and the mask count shared by both generators; returns (height, width)."""
    height, width = grid_size
    if height < 1 or width < 1:
        raise ValueError(f"grid_size={grid_size} must be two positive integers (rows, columns of patches).")
    check_num_masking_patches(num_masking_patches, height * width)
    return height, width


def _adjust_to_count(mask: np.ndarray, num_masking_patches: int, rng: np.random.Generator) -> np.ndarray:
    """Tops up with random unmasked patches, or unmasks random masked ones, until exactly the count is masked.

    The block loop never overshoots (a block is accepted only if it fits the remaining count); trimming keeps this
    helper exact for any input.
    """
    flat_mask = mask.reshape(-1)
    missing = num_masking_patches - int(flat_mask.sum())
    if missing > 0:
        flat_mask[rng.choice(np.flatnonzero(~flat_mask), size=missing, replace=False)] = True
    elif missing < 0:
        flat_mask[rng.choice(np.flatnonzero(flat_mask), size=-missing, replace=False)] = False
    return flat_mask


class BlockMaskGenerator:
    """Block-wise masking of BEiT, as CAE v2 uses it (docs/method.md#masking), with a bounded loop and an exact count.

    Args:
        grid_size: (rows, columns) of the patch grid, e.g. (14, 14) for 224 px images with 16 px patches.
        num_masking_patches: how many patches every mask hides.
        min_num_patches: smallest target area of one block, in patches.
        min_aspect: smallest block aspect ratio (height / width).
        max_aspect: largest block aspect ratio; defaults to 1 / min_aspect.
    """

    max_attempts_per_block = 10  # docs/method.md#masking: up to 10 tries to place one block
    max_stalled_rounds = 10  # blocks in a row that add nothing before the random top-up

    def __init__(
        self,
        grid_size: tuple[int, int],
        num_masking_patches: int,
        min_num_patches: int = 16,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        self.height, self.width = _validate_grid_and_count(grid_size, num_masking_patches)
        self.num_masking_patches = num_masking_patches
        if min_num_patches < 1:
            raise ValueError(f"min_num_patches={min_num_patches} must be at least 1 (16 in CAE v2 and BEiT).")
        max_aspect = 1 / min_aspect if max_aspect is None and min_aspect > 0 else max_aspect
        if not 0 < min_aspect <= max_aspect:
            raise ValueError(
                f"Aspect range [min_aspect={min_aspect}, max_aspect={max_aspect}] must satisfy 0 < min <= max "
                "(CAE v2 uses min_aspect=0.3 and max_aspect=1/0.3)."
            )
        self.min_num_patches = min_num_patches
        self.log_aspect_range = (math.log(min_aspect), math.log(max_aspect))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(grid_size={(self.height, self.width)}, num_masking_patches="
            f"{self.num_masking_patches}, min_num_patches={self.min_num_patches})"
        )

    def _place_block(self, mask: np.ndarray, remaining: int, rng: np.random.Generator) -> int:
        """Masks one random block adding 1..remaining new patches; returns how many it added (0 after 10 misses)."""
        # Area ~ U(min_num_patches, remaining) as in the official generator: below min_num_patches the draw lies in
        # (remaining, min_num_patches], so the last blocks grow existing ones (they fit only where they overlap)
        # instead of scattering small separate blobs.
        for _ in range(self.max_attempts_per_block):
            target_area = self.min_num_patches + (remaining - self.min_num_patches) * rng.random()
            aspect = math.exp(rng.uniform(*self.log_aspect_range))
            block_height = round(math.sqrt(target_area * aspect))
            block_width = round(math.sqrt(target_area / aspect))
            if not (1 <= block_height < self.height and 1 <= block_width < self.width):
                continue
            top = rng.integers(0, self.height - block_height + 1)
            left = rng.integers(0, self.width - block_width + 1)
            block = mask[top : top + block_height, left : left + block_width]
            num_new = block.size - int(block.sum())
            if 0 < num_new <= remaining:
                block[...] = True
                return num_new
        return 0

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """Draws one mask: bool array of shape (height * width,), row-major, True = masked."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        num_masked = 0
        # Bounded: at most num_masking_patches productive rounds and max_stalled_rounds rounds in a row that add
        # nothing (the official loop retries forever and can spin at high ratios, docs/method.md#masking); a random top-up or trim
        # then makes the count exact.
        stalled_rounds = 0
        while num_masked < self.num_masking_patches and stalled_rounds < self.max_stalled_rounds:
            num_added = self._place_block(mask, self.num_masking_patches - num_masked, rng)
            num_masked += num_added
            stalled_rounds = stalled_rounds + 1 if num_added == 0 else 0
        return _adjust_to_count(mask, self.num_masking_patches, rng)


class RandomMaskGenerator:
    """Uniformly random masking with an exact count (the paper's Table 3 alternative to block-wise masking)."""

    def __init__(self, grid_size: tuple[int, int], num_masking_patches: int) -> None:
        self.height, self.width = _validate_grid_and_count(grid_size, num_masking_patches)
        self.num_masking_patches = num_masking_patches

    def __repr__(self) -> str:
        return f"{type(self).__name__}(grid_size={(self.height, self.width)}, num_masking_patches={self.num_masking_patches})"

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """Draws one mask: bool array of shape (height * width,), row-major, True = masked."""
        mask = np.zeros(self.height * self.width, dtype=bool)
        mask[rng.choice(mask.size, size=self.num_masking_patches, replace=False)] = True
        return mask


MaskGenerator = BlockMaskGenerator | RandomMaskGenerator


def build_mask_generator(
    grid_size: tuple[int, int], num_masking_patches: int, layout: "PretrainingDataArguments"
) -> MaskGenerator:
    """The generator pretraining draws its masks with: the model's count (`CAEv2Config.num_masking_patches`) on the
    patch grid, laid out as `layout` says: its `mask_strategy` and, for block masking, `mask_min_num_patches` and
    `mask_min_aspect` (the pretraining data arguments, or any object with those three attributes)."""
    if layout.mask_strategy == "block":
        return BlockMaskGenerator(grid_size, num_masking_patches, layout.mask_min_num_patches, layout.mask_min_aspect)
    if layout.mask_strategy == "random":
        return RandomMaskGenerator(grid_size, num_masking_patches)
    raise ValueError(f"mask_strategy={layout.mask_strategy!r} is not supported: use 'block' or 'random'.")
