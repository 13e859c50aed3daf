"""Tiling: where the tiles are, how they are weighted, in which order the work goes, and how much
memory it may take. Pure arithmetic: no torch, no dask, no I/O (a contract checks it).

- ``grid``: the tile grid (windows of ``tile_size`` with ``overlap``, aligned for PSPNet);
- ``blend``: the blend weights, full at the image border;
- ``plan``: :class:`TilingOptions` and the stripes of output chunks with their batches of tiles;
- ``budget``: batch, chunk and stripe sizes from a memory limit, and jobs too large refused;
- ``augmentation``: which copies of each batch the network sees (test-time augmentation).
"""

from segtile.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "segtile.tiling.grid": ("Tile", "tile_grid", "tile_starts", "tiles_along", "aligned_tiling", "check_tiling",
                            "check_stride"),
    "segtile.tiling.blend": ("BLENDS", "check_blend", "tile_weight"),
    "segtile.tiling.plan": ("TilingOptions", "Stripe", "fit_to_image", "plan_stripes", "tile_runs", "count_tasks"),
    "segtile.tiling.budget": ("DEFAULT_LIMIT", "MemoryPlan", "parse_size", "plan_memory", "check_plan_size"),
    "segtile.tiling.augmentation": ("Augmentation", "FROM_CARD", "check_augmentation"),
})
