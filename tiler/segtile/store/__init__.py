"""The work store: a run's finished chunks on disk, which run they belong to, and what reads them.

- ``workstore``: the Zarr store of finished chunks, each marked done with its files' checksums;
- ``identity``: a run's identity (inputs by fingerprint, model, card, options, version), the
  work folder it claims, and whether a store left by an earlier run may be resumed;
- ``persist``: a segmentation computed once into a store that every later writer reads;
- ``staging``: several outputs written from one pass, staged through a scratch store.
"""

from segtile.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "segtile.store.workstore": ("WorkStore", "computed_store", "is_work_store"),
    "segtile.store.identity": ("Work", "run_identity", "prepare_work", "claim_work_folder", "work_folder"),
    "segtile.store.persist": ("Stored",),
    "segtile.store.staging": ("write_outputs", "staged"),
})
