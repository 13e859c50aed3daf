"""Resuming an interrupted run: which work store belongs to which run, and which run may use it.

Every run of the ``segtile`` command keeps its finished chunks in a work store beside its first
output (``.NAME.segtile-work``, :mod:`segtile.store.workstore`), and removes it once every output is in
place. A run that dies leaves it behind.

**One run at a time.** A run claims the folder before any work (:func:`claim_work_folder`): it
holds its ``owner`` file locked (:mod:`segtile.writers.owner`) until it ends, so a second run for the
same outputs is refused in one line naming the first, never mixed into its store. A folder of
that name that segtile cannot prove its own (by its layout and records) is never emptied: the
run is refused.

**The identity.** ``run.json`` records the run's identity (:func:`run_identity`): every input file
by a content fingerprint (the image and every file GDAL reads with it: a VRT's sources, a world
file, overviews; a slide's companion files; the ``--mask`` file and its sidecars; the model by its
SHA-256, with an ONNX model's external data), the model card, the processing grid, the options
that change a pixel of an output (tiling, blending, precision, augmentation, bands, grid
options, tissue detection and its threshold, the area of interest) and segtile's version. With
``--resume``, a store whose identity is the run's own is continued, after checking each finished
chunk against its checksum; any other is replaced, with a note naming what differs, so a changed
input, model or option is never mixed with old work. Without ``--resume`` an old store is
replaced too.

**The fingerprint** of an input file is its path, size, inode, modification and change times
(``ctime``: the system sets it on every write or metadata change, and no tool can set it back)
and the SHA-256 of its first and last 64 KiB and of 32 blocks of 64 KiB spread evenly over it
(the whole file up to 2.1 MiB): about 2 MiB read, whatever the file's size. It detects a file
rewritten or replaced, even with its size and modification time kept (``cp -p``, ``rsync -t``,
``touch -r``, a file moved over it), and any change to the sampled bytes. It cannot detect a
change confined to unsampled bytes on a file system that keeps no change time or inode (FAT,
some network mounts), or one made while the system clock was set back to the same nanosecond;
it sees a change where there is none after ``chmod``, ``chown`` or a move (resume then starts
afresh). A folder input is fingerprinted by the size and times of every file in it.

**A remote input** (``https://``, ``s3://``, ``gs://``, ``az://``, or GDAL's ``/vsicurl/``,
``/vsis3/``, ``/vsigs/``, ``/vsiaz/`` paths of them) is fingerprinted by what its server says of
it (fsspec's ``info``: a HEAD request, or the object store's metadata): its size, its ``ETag``
(which object stores and most web servers change with the content: S3's is the MD5 of the bytes
or of their parts) and its ``Last-Modified`` time. A server that gives no ETag (Python's
``http.server``, some CDNs) has its file's bytes sampled as a local file's are, by range
requests (about 2 MiB fetched). Other GDAL virtual paths (``/vsizip/``, ``/vsitar/``) and servers
that cannot be asked are identified by their address alone.
Options that change only rounding (batch size, device, stitching on the device) or only memory
(stripe width, memory limit) are left out: a run killed for want of memory can resume with a
smaller batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from segtile.errors import NotAWorkStoreError, OutputError, WorkStoreBusyError
from segtile.sources.files import is_remote
from segtile.sources.remote import RemoteFile, is_url, remote_info, url_of_vsi_path
from segtile.store.workstore import DONE, OWNER, WorkStore, is_work_store
from segtile.version import version
from segtile.writers.atomic import write_failure
from segtile.writers.owner import Claim, Held

if TYPE_CHECKING:
    from segtile.result import Segmentation

SUFFIX = ".segtile-work"
SAMPLE = 2**16  # bytes in each block of a fingerprint
SAMPLES = 32  # blocks sampled between a file's first and last
_CLAIM_TRIES = 5  # a folder removed by the run that ends as this one starts is made again
VECTOR_SIDECARS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".shp.xml")
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")  # a GeoPackage's pending writes
GIVEN_OPTIONS = ("bands", "resolution", "mpp", "level", "tissue", "tissue_threshold", "mask")
"""Options of :func:`segtile.segment` kept in the identity as given (their effect on the grid and
the masks is not otherwise in it)."""
BY_EFFECT = ("tile_size", "overlap", "blend", "precision", "tta", "scales", "chunk_size")
"""Options of :func:`segtile.segment` in the identity by their effect: the tiling the run uses
(chosen from the model card, or the memory limit, when not given)."""
LEFT_OUT = {"batch_size": "rounding", "device": "rounding", "stitch_on_device": "rounding",
            "stripe_width": "memory", "memory_limit": "memory (the sizes it chooses are in the tiling)"}
"""Options of :func:`segtile.segment` not in the identity, and why: they change no pixel beyond
floating-point rounding, or only how much memory the run takes."""


def work_folder(first_output: Path) -> Path:
    """Where the work store of a run whose first output is ``first_output`` lives."""
    return first_output.parent / f".{first_output.name}{SUFFIX}"


@contextmanager
def claim_work_folder(folder: Path) -> Iterator[None]:
    """Hold ``folder`` (made if missing) for this run until the block ends; then give it up,
    removing it when nothing but the owner file is left in it (the store was removed, or never
    made).

    Raises:
        WorkStoreBusyError: another live run holds it (the message names that run).
        NotAWorkStoreError: it holds something segtile did not write.
        OutputError: it cannot be made (a full disk).
    """
    claim = _claim(folder)
    try:
        yield
    finally:
        empty = False
        with suppress(OSError):
            empty = set(os.listdir(folder)) <= {OWNER}
        claim.release(remove=empty)
        if empty:
            with suppress(OSError):
                folder.rmdir()


def _claim(folder: Path) -> Claim:
    for _ in range(_CLAIM_TRIES):
        try:
            folder.mkdir()
            made = True
        except FileExistsError:
            made = False
        except OSError as exc:
            raise OutputError(f"cannot create the work store in {folder.parent}: "
                              f"{write_failure(exc, folder.parent)}") from exc
        if not made and not is_work_store(folder):
            raise NotAWorkStoreError(_not_a_work_store(folder))
        try:
            claim = Claim.take(folder / OWNER)
        except Held as held:
            raise WorkStoreBusyError(
                f"another segtile run ({held.owner or 'a process'}) is writing these outputs, with its work store "
                f"in {folder}: wait for it to end, or choose other outputs") from None
        except FileNotFoundError:  # its last run removed the folder meanwhile
            continue
        except OSError as exc:
            if made:
                (folder / OWNER).unlink(missing_ok=True)
                folder.rmdir()
            raise OutputError(f"cannot create the work store in {folder.parent}: "
                              f"{write_failure(exc, folder.parent)}") from exc
        if claim.is_current():
            return claim
        claim.release()
    raise WorkStoreBusyError(f"{folder} keeps being removed and made again: another segtile run is using it")


def _not_a_work_store(folder: Path) -> str:
    try:
        names = sorted(os.listdir(folder))
        held = f"it holds {', '.join(names[:3])}{', …' if len(names) > 3 else ''}"
    except OSError as exc:
        held = exc.strerror or "it cannot be read"
    kind = "folder" if folder.is_dir() else "file"
    return (f"{folder} is in the way of the run's work store and is no work store of segtile's ({kind}; {held}): "
            "segtile removes only what it wrote; move it away, or name the first output otherwise")


def run_identity(result: Segmentation, image: str | Sequence[str], model: str | os.PathLike, precision: str | None,
                 settings: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two runs' chunks interchangeable (see the module docstring): ``result`` of
    ``segtile.segment(image, model, **settings)``, keeping probabilities at ``precision``;
    ``image`` may be the inputs of a mosaic, each fingerprinted."""
    images = [image] if isinstance(image, str) else list(image)
    options = result.options
    georef = result.georef
    given = {name: settings.get(name) for name in GIVEN_OPTIONS}
    if given["mask"] is not None:
        given["mask"] = os.path.abspath(given["mask"])
    return {
        "segtile": version(),
        "image": [fingerprint(path) for one in images for path in input_files(one)],
        "mask": None if given["mask"] is None else [fingerprint(path) for path in input_files(given["mask"])],
        "model": {"sha256": model_digest(model), "files": [fingerprint(path) for path in model_data_files(model)]},
        "options": given,
        "bands": list(result.source.band_names),
        "card": result.card.to_dict(),
        "grid": {"shape": list(result.shape), "crs": georef.crs.to_wkt() if georef.crs else None,
                 "transform": list(georef.transform)[:6] if georef.transform else None, "mpp": georef.mpp},
        "tiling": {"tile_size": options.tile_size, "overlap": options.overlap, "blend": options.blend,
                   "chunk_size": options.chunk_size, "alignment": options.alignment,
                   "precision": options.precision, "augmentation": [options.augmentation.mode,
                                                                    list(options.augmentation.scales)]},
        "probabilities": precision,
    }


def input_files(path: str | os.PathLike) -> list[str]:
    """Every local file reading ``path`` involves: the files GDAL names for what it opens (a VRT's
    sources, a world file, an ``.aux.xml``, overviews), or else the file with its sidecars (a
    Shapefile's, a GeoPackage's pending writes) and a slide's companions; a remote path alone."""
    path = os.fspath(path)
    if is_remote(path):
        return [path]
    path = os.path.abspath(path)
    try:
        import rasterio

        with rasterio.open(path) as dataset:
            files = [os.path.abspath(name) for name in dataset.files]
    except Exception:  # no raster GDAL reads (polygons, a slide only OpenSlide reads): by name
        files = []
    return sorted({path, *files, *_sidecars(Path(path))})


def _sidecars(path: Path) -> list[str]:
    """The files beside ``path`` its reader also reads: a Shapefile's parts, a GeoPackage's
    pending writes, a MIRAX slide's data folder, the other files of a DICOM slide."""
    found = [path.with_name(path.name + suffix) for suffix in SQLITE_SIDECARS]
    found += [path.with_suffix(suffix) for suffix in VECTOR_SIDECARS]
    suffix = path.suffix.lower()
    if suffix == ".mrxs" and path.with_suffix("").is_dir():
        found += [p for p in path.with_suffix("").rglob("*")]
    if suffix == ".dcm":
        found += list(path.parent.glob("*.dcm"))
    return [str(p) for p in found if p.is_file()]


def model_data_files(model: str | os.PathLike) -> list[str]:
    """The files an ONNX model keeps its weights in beside it (external data), if any."""
    path = Path(model)
    if path.suffix.lower() != ".onnx":
        return []
    try:
        import onnx
        from onnx.external_data_helper import uses_external_data

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # no onnx package, or a file onnxruntime reports on itself
        return []
    locations = {entry.value for tensor in graph.initializer if uses_external_data(tensor)
                 for entry in tensor.external_data if entry.key == "location"}
    return sorted(str(path.parent / location) for location in locations)


def fingerprint(path: str) -> dict[str, Any]:
    """A cheap identification of the content of the input file ``path`` (see the module docstring)."""
    if is_remote(path):
        return remote_fingerprint(path)
    try:
        stat = os.stat(path)
    except OSError:
        return {"path": path, "missing": True}
    record = {"path": path, "size": stat.st_size, "inode": stat.st_ino, "mtime_ns": stat.st_mtime_ns,
              "ctime_ns": stat.st_ctime_ns}
    if os.path.isdir(path):
        record["files"] = _folder_digest(Path(path))
    else:
        record["sampled_sha256"] = sampled_digest(path, stat.st_size)
    return record


def remote_fingerprint(path: str) -> dict[str, Any]:
    """The identification of a remote input (a URL, or the GDAL path of one): what its server
    says of it (size, ``ETag``, ``Last-Modified``), and, where the server gives no ETag, the
    sampled SHA-256 of :func:`sampled_digest` read by range requests. Other GDAL virtual paths
    (``/vsizip/``...) and servers that cannot be asked are identified by their address alone."""
    url = path if is_url(path) else url_of_vsi_path(path)
    if url is None:
        return {"path": path}
    try:
        record = {"path": path, **remote_info(url)}
        if "etag" not in record and record.get("size"):
            record["sampled_sha256"] = sampled_digest(url, record["size"], opener=lambda _: RemoteFile(url).open())
    except Exception:  # unreachable, or no fsspec file system for it: the run's own open reports why
        return {"path": path}
    return record


def sampled_digest(path: str | os.PathLike, size: int, opener: Callable[[Any], IO[bytes]] | None = None) -> str:
    """The SHA-256 of ``path``'s first and last :data:`SAMPLE` bytes and of :data:`SAMPLES`
    blocks spread evenly between them (of the whole file, when that is not more); ``opener``
    opens ``path`` for reading in binary (a remote file's: by byte ranges)."""
    digest = hashlib.sha256()
    with (opener or _open_binary)(path) as file:
        if size <= SAMPLE * (SAMPLES + 2):
            offsets = [0]
            length = size
        else:
            offsets = [round(k * (size - SAMPLE) / (SAMPLES + 1)) for k in range(SAMPLES + 2)]
            length = SAMPLE
        for offset in offsets:
            file.seek(offset)
            digest.update(file.read(length))
    return digest.hexdigest()


def _open_binary(path: str | os.PathLike) -> IO[bytes]:
    return open(path, "rb")


def _folder_digest(folder: Path) -> str:
    """The SHA-256 of the names, sizes, inodes and times of every file under ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_ino}:{stat.st_mtime_ns}:"
                      f"{stat.st_ctime_ns}\n".encode())
    return digest.hexdigest()


def model_digest(model: str | os.PathLike) -> str:
    """The SHA-256 of a model file, or of a model folder's files (their names and digests)."""
    folder = Path(model)
    if not folder.is_dir():
        return file_digest(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Work:
    """The work store a run uses, what it already holds, and what to tell the user about it."""

    store: WorkStore
    done: frozenset[tuple[int, int]]
    note: str | None


def prepare_work(folder: Path, result: Segmentation, identity: dict[str, Any], precision: str | None,
                 resume: bool) -> Work:
    """The run's work store in ``folder`` (claimed by :func:`claim_work_folder`): the old one
    continued when ``resume`` and it is this run's, else a new one (replacing any old one, with
    a note)."""
    identity = json.loads(json.dumps(identity))  # as run.json gives it back
    old = WorkStore(folder, durable=True)
    note = None
    if set(os.listdir(folder)) - {OWNER}:
        kept = old.identity()
        if kept is None:
            note = f"the work store in {folder} was cut off while being made: starting afresh"
        elif resume and kept == identity:
            resumed = _resumed(old, result, precision)
            if resumed is not None:
                return resumed
            note = f"the work kept in {folder} is damaged (its Zarr store cannot be read): starting afresh"
        elif resume:
            note = f"the work kept in {folder} is from another run ({_differences(kept, identity)}): starting afresh"
        elif kept == identity:
            note = f"replaced the work an interrupted run left in {folder} (--resume would have continued it)"
        else:
            note = f"replaced the work another run left in {folder} ({_differences(kept, identity)})"
        old.remove()
    elif resume:
        note = "nothing to resume: no work store beside the first output, starting afresh"
    store = WorkStore.create(folder, result.labels, result.nodata, result.card.num_classes, precision, identity)
    return Work(store, frozenset(), note)


def _resumed(store: WorkStore, result: Segmentation, precision: str | None) -> Work | None:
    """``store`` continued, with the chunks whose checksums agree counted done; ``None`` when its
    Zarr store is missing or not shaped as this run's."""
    chunks = tuple(sizes[0] for sizes in result.labels.chunks)
    try:
        group = store.open()
        labels = group["labels"]
        if labels.shape != result.shape or labels.chunks != chunks or ("probabilities" in group) != bool(precision):
            return None
        done, failed = store.verified()
    except (OSError, ValueError, KeyError):  # zarr.json lost or damaged
        return None
    total = len(result.labels.chunks[0]) * len(result.labels.chunks[1])
    note = f"resuming: {len(done)} of {total} chunks were done"
    if not (store.folder / DONE).is_dir():
        note += f" (the work store's {DONE}/ folder, which lists them, is missing)"
    if failed:
        note += (f"; {failed} more were marked done but their files no longer hold what was written "
                 "(lost, cut short, damaged or replaced): they are computed again")
    return Work(store, done, note)


_PARTS = {"segtile": "another segtile version", "model": "another model", "card": "another model card",
          "bands": "other bands", "grid": "another processing grid", "tiling": "other tiling options",
          "probabilities": "other probabilities kept"}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between a store's identity ``old`` and the run's ``new``, in words."""
    parts = []
    for key, value in new.items():
        if old.get(key) == value:
            continue
        if key in ("image", "mask"):
            changed = _changed_files(old.get(key), value)
            what = "input" if key == "image" else "mask"
            parts.append(f"the {what} {changed} changed" if changed else f"another {what}")
        elif key == "options":
            before = old.get(key) if isinstance(old.get(key), dict) else {}
            parts.append("other options: " + ", ".join(name for name in value if before.get(name) != value[name]))
        else:
            parts.append(_PARTS[key])
    return "; ".join(parts)


def _changed_files(old: Any, new: list[dict[str, Any]] | None) -> str | None:
    """The names of the files of ``new`` that ``old`` records otherwise (both lists of
    fingerprints), or ``None`` when the lists name other files."""
    if not isinstance(old, list) or new is None or [f.get("path") for f in old] != [f["path"] for f in new]:
        return None
    return ", ".join(Path(f["path"]).name for f, before in zip(new, old) if f != before)
