"""Device helpers shared by the Triton kernels (called from inside ``@triton.jit`` functions)."""

import triton
import triton.language as tl


@triton.jit
def tile_mask(rows, cols, n_rows, n_cols, EVEN_ROWS: tl.constexpr, EVEN_COLS: tl.constexpr):
    """(BLOCK_ROWS, BLOCK_COLS) bounds mask of the tile ``rows x cols``.

    An axis the block divides exactly gets no runtime test, which keeps the mask constant along the
    contiguous axis (a condition for vector accesses).
    """
    if EVEN_ROWS:
        mask_r = tl.full(rows.shape, 1, tl.int1)
    else:
        mask_r = rows < n_rows
    if EVEN_COLS:
        mask_c = tl.full(cols.shape, 1, tl.int1)
    else:
        mask_c = cols < n_cols
    return mask_r[:, None] & mask_c[None, :]
