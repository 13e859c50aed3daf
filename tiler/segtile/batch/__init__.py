"""Many inputs in one run: a cohort of slides, a folder of tiles, a list of scenes.

:func:`segment_many` segments each input in turn, in one process, with the model loaded once,
and yields what became of each item: ``done``, ``skipped`` (its outputs were all there, from an
earlier run) or ``failed`` (with its one-line reason; the others go on). The ``segtile`` command
is built on it, for one input as for many.

**Inputs** (:func:`expand_inputs`): paths; folders (every file in them whose extension names an
image segtile reads, :data:`IMAGE_SUFFIXES`, hidden files left out); globs segtile expands
itself (``"slides/*.svs"``, ``"**"`` recursing); ``@list.txt``, a file naming one input per line
(blank lines and ``#`` comments skipped; relative paths from the current folder). Remote inputs
(``https://``, ``s3://``, ``/vsicurl/...``) are passed on untouched.

**Outputs**: with several inputs each output path is a template whose placeholders
(:data:`PLACEHOLDERS`: ``{stem}``, ``{name}``, ``{parent}``, ``{index}``) are filled per input,
checked before any work: every output must hold one, and no two inputs may map to the same file.

**Each item** runs as one ``segtile`` run does (:func:`run_item`): its outputs checked first, its
own work store beside its first output (``--resume`` continues an interrupted item from it), its
outputs appearing together when complete. On a ``dask.distributed`` cluster several items run at
once, each on a worker of its own, with that worker's threads.

Modules: ``items`` (the inputs expanded, the outputs named, all checked; finished items),
``run`` (each item run, :func:`segment_many`), ``summary`` (the ``--summary`` file).
"""

from segtile.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "segtile.batch.items": ("IMAGE_SUFFIXES", "PLACEHOLDERS", "Item", "expand_inputs", "fill_template", "finished",
                            "names_many", "plan_items", "plan_mosaic"),
    "segtile.batch.run": ("ItemResult", "RunSettings", "run_item", "run_items", "run_or_skip", "segment_many"),
    "segtile.batch.summary": ("SUMMARY_FIELDS", "check_summary_path", "write_summary"),
})
