"""Training masks for CAE v2 (docs/method.md#masking): block-wise (BEiT style, the default) and uniformly random.

Every mask has exactly the requested number of masked patches, because the encoder gathers the same number of
visible patches for every image of a batch (docs/method.md#encoder). Randomness always comes from an explicit numpy Generator, so
a resumed run that replays the data stream redraws the same masks.
"""

import math
from typing import TYPE_CHECKING

import numpy as np
import torch


if TYPE_CHECKING:
    from ..configuration_caev2 import CAEv2Config


def _validate_grid_and_count(grid_size: tuple[int, int], num_masking_patches: int) -> tuple[int, int]:
    """Checks the patch grid and the mask count shared by both generators; returns (height, width)."""
    height, width = grid_size
    if height < 1 or width < 1:
        raise ValueError(f"grid_size={grid_size} must be two positive integers (rows, columns of patches).")
    num_patches = height * width
    if not 0 <= num_masking_patches < num_patches:
        raise ValueError(
            f"num_masking_patches={num_masking_patches} must be in [0, {num_patches}) for a {height}x{width} grid: "
            "at least one patch must stay visible for the encoder. Lower the count (e.g. round(ratio * num_patches))."
        )
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


def build_mask_generator(config: "CAEv2Config") -> MaskGenerator:
    """Builds the generator a `CAEv2Config` asks for (`mask_strategy` "block" or "random")."""
    grid_side = config.image_size // config.patch_size
    grid_size = (grid_side, grid_side)
    if config.mask_strategy == "block":
        return BlockMaskGenerator(
            grid_size,
            config.num_masking_patches,
            min_num_patches=config.mask_min_num_patches,
            min_aspect=config.mask_min_aspect,
        )
    if config.mask_strategy == "random":
        return RandomMaskGenerator(grid_size, config.num_masking_patches)
    raise ValueError(f"mask_strategy={config.mask_strategy!r} is not supported: use 'block' or 'random'.")


class MaskingCollator:
    """Stacks uint8 images and draws one mask per image, in the loader workers (docs/design.md#data-path: no float work here).

    The masks of a batch come from a Generator seeded by (seed, process index, worker id, epoch, batch index of
    this worker in this epoch), so they depend only on the data position: two runs with the same seed and data
    order, or a resumed run that replays the epoch, draw the same masks, and processes draw different ones. In a
    worker the epoch is read from the worker's dataset (`datasets` shares it with persistent workers); without
    workers, `set_epoch` provides it.

    Returns `pixel_values` uint8 (batch, 3, H, W), `bool_masked_pos` bool (batch, num_patches), `labels` int64
    (batch,) when every example has a label, and `num_skipped_images`, an int64 scalar: how many unreadable images
    were dropped before the images of this batch (see `data.LabelledImageStream`).
    """

    def __init__(self, mask_generator: MaskGenerator, seed: int = 0, process_index: int = 0) -> None:
        if seed < 0 or process_index < 0:
            raise ValueError(f"seed={seed} and process_index={process_index} must be non-negative (they seed numpy).")
        self.mask_generator = mask_generator
        self.seed = seed
        self.process_index = process_index
        self.epoch = 0
        self._counter_epoch = 0
        self._num_calls = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _next_rng(self) -> np.random.Generator:
        worker_info = torch.utils.data.get_worker_info()
        worker_id = worker_info.id if worker_info is not None else 0
        epoch = int(getattr(worker_info.dataset, "epoch", self.epoch)) if worker_info is not None else self.epoch
        if epoch != self._counter_epoch:
            self._counter_epoch, self._num_calls = epoch, 0
        rng = np.random.default_rng([self.seed, self.process_index, worker_id, epoch, self._num_calls])
        self._num_calls += 1
        return rng

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rng = self._next_rng()
        masks = np.stack([self.mask_generator(rng) for _ in examples])
        batch = {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "bool_masked_pos": torch.from_numpy(masks),
            "num_skipped_images": torch.tensor(sum(example.get("num_skipped", 0) for example in examples)),
        }
        if all(example.get("label") is not None for example in examples):
            batch["labels"] = torch.tensor([example["label"] for example in examples], dtype=torch.int64)
        return batch
