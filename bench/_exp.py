import sys, time, shutil, torch, dask.array as da
from bench.workloads import pointwise_model
from segtile import segment
size = int(sys.argv[1]); m = f"bench/out/mosaic_{size}.tif"; out = "/tmp/exp.zarr"
model = pointwise_model()
for bs in [int(b) for b in sys.argv[2:]]:
    ts = []
    for i in range(3):
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter(); cpu = time.process_time()
        r = segment(m, model, tile_size=512, overlap=64, blend="gaussian", device="cpu", batch_size=bs)
        da.to_zarr(r.labels, out)
        ts.append((time.perf_counter() - t, time.process_time() - cpu))
    print(bs, r.options.batch_size, r.options.chunk_size, " ".join(f"{w:.2f}s/cpu{c:.2f}" for w, c in ts), flush=True)
