"""The engine: the Dask graph that runs the model tile by tile, and its plumbing.

- ``graph``: the batch tasks (read tiles, run the predictor, weight the logits) and the chunk
  tasks (stitch the products of one output chunk), in stripes;
- ``cluster``: which ``dask.distributed`` client runs the work, local clusters, joined thread pools;
- ``events``, ``progress``: tile counts from the batch tasks, here or on cluster workers, and the
  stages shown as bars or JSON lines;
- ``interrupt``: a run told to stop (Ctrl-C, SIGTERM) stops its tasks;
- ``heap``: keeping the process's heap close to its live data (glibc).
"""

from segtile.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "segtile.engine.graph": ("build_products", "read_tile", "run_batch", "stitch_chunk", "label_dtype", "run_token",
                             "stitches_on_device", "PRODUCTS", "BATCH_PREFIX"),
    "segtile.engine.cluster": ("current_client", "local_cluster", "parse_gpus", "joined_threads", "task_threads"),
    "segtile.engine.events": ("TileCounts",),
    "segtile.engine.progress": ("Progress", "TileTally", "tile_progress"),
    "segtile.engine.interrupt": ("STOP", "Interrupted", "stop_if_asked"),
    "segtile.engine.heap": ("keep_large_arrays_off_the_heap", "release_free_memory"),
})
