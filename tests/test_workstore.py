"""The store several outputs are written from: only what they need, at the precision they keep."""

import threading

import dask
import dask.array as da
import numpy as np
import zarr

from segtile.georef import Georef
from segtile.models import ModelCard
from segtile.store.staging import stage
from segtile.store.workstore import WorkStore, _write_chunk
from segtile.writers.blocks import ZarrWrites
from segtile.writers.outputs import Layers

CARD = ModelCard(classes=tuple(f"c{i}" for i in range(150)))


def layers() -> Layers:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(150), size=(40, 50)).transpose(2, 0, 1).astype(np.float32)
    labels = probabilities.argmax(axis=0).astype(np.uint8)
    labels[:5, :7] = 255
    probabilities[:, :5, :7] = np.nan
    return Layers(da.from_array(labels, chunks=16), da.from_array(probabilities, chunks=(150, 16, 16)),
                  Georef(), CARD, 255)


def test_labels_alone_when_no_output_writes_probabilities(tmp_path):
    ready = stage(layers(), tmp_path / "work", precision=None)
    assert ready.probabilities is None
    assert list(zarr.open_group(str(tmp_path / "work" / "work.zarr"), mode="r").array_keys()) == ["labels"]
    np.testing.assert_array_equal(ready.labels.compute(), layers().labels.compute())


def test_probabilities_kept_as_bytes_for_byte_outputs(tmp_path):
    given = layers()
    ready = stage(given, tmp_path / "work", precision="uint8")
    stored = zarr.open_group(str(tmp_path / "work" / "work.zarr"), mode="r")["probabilities"]
    assert stored.dtype == np.uint8  # 1 byte per class and pixel, not 4
    back = ready.probabilities.compute()
    expected = given.probabilities.compute()
    assert np.isnan(back[:, :5, :7]).all()
    np.testing.assert_array_equal(np.round(back[:, 5:] * 255), np.round(expected[:, 5:] * 255))


def test_probabilities_kept_as_floats_for_float_outputs(tmp_path):
    ready = stage(layers(), tmp_path / "work", precision="float32")
    np.testing.assert_array_equal(ready.probabilities.compute(), layers().probabilities.compute())


def test_a_store_is_filled_one_stripe_after_another(tmp_path, pointwise_model, monkeypatch):
    """Given every stripe at once, a distributed scheduler works on all of them together and holds
    each one's band of batch results; the store is filled stripe by stripe instead."""
    from segtile import segment
    from segtile.engine import graph as engine

    stripes_stitched = []

    def recording_stitch(chunk, *args):
        stripes_stitched.append(chunk.col_off // 64)  # stripes of 64 px
        return stitch_chunk(chunk, *args)

    stitch_chunk = engine.stitch_chunk
    monkeypatch.setattr(engine, "stitch_chunk", recording_stitch)
    image = np.random.default_rng(2).normal(size=(3, 96, 160)).astype(np.float32)
    result = segment(image, pointwise_model(bands=3, classes=2), tile_size=32, overlap=8, batch_size=2,
                     chunk_size=32, stripe_width=64, device="cpu")
    assert [list(group) for group in result.column_groups] == [[0, 1], [2, 3], [4]]
    with dask.config.set(scheduler="threads", num_workers=4):
        stored = stage(result.layers(), tmp_path / "work", None)
    assert stripes_stitched == sorted(stripes_stitched) and len(stripes_stitched) == 15
    np.testing.assert_array_equal(stored.labels.compute(), result.labels.compute())


def test_a_chunk_handed_over_without_waiting_is_marked_done_only_once_its_arrays_are_written(tmp_path):
    """The store's tasks hand their chunks to Zarr and go on (ZarrWrites); the marker, with the
    checksums of the chunk's files, still follows the arrays."""
    given = layers()
    work = WorkStore.create(tmp_path / "work", given.labels, 255, 150, "uint8", identity={"run": 1})
    labels = given.labels.blocks[1, 2].compute()
    probabilities = given.probabilities.blocks[0, 1, 2].compute()
    region = (slice(16, 32), slice(32, 48))
    with ZarrWrites() as writes:
        release = threading.Event()
        loop, _ = writes._running
        loop.call_soon_threadsafe(release.wait, 30)  # no write can start until released
        _write_chunk(str(work.folder), work.writable_arrays(), 1, 2, region, labels, probabilities, work.durable,
                     writes)
        assert work.done() == frozenset()  # the task returned; nothing written, nothing marked
        release.set()
        writes.finish()
    assert work.verified() == (frozenset({(1, 2)}), 0)  # marked, and the files agree with the marker
    stored = work.layers(given)
    np.testing.assert_array_equal(stored.labels[16:32, 32:48].compute(), labels)
