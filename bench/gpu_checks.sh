#!/usr/bin/env bash
# Issue 13's GPU checks in one run, most telling first, for a machine with a CUDA GPU (none has
# been lent to this project yet). From the repository root, with segtile installed over a CUDA
# build of torch:
#
#     bash bench/gpu_checks.sh 2>&1 | tee bench/out/gpu_checks.txt
#
# 1. the pipeline's efficiency with PSPNet-50 in fp16 (the model alone against segtile);
# 2. a 150-class PSPNet-50 over 10000 x 10000 px, the chunks stitched on the device and then on
#    the host: time, peak host RSS and peak device memory of each;
# 3. the host side with a trivial model (GeoTIFF to Zarr labels) at 4000 and 16000 px;
# 4. the goal: PSPNet-50 in fp16 over one gigapixel (31623 x 31623 px) in under 60 s.
# The mosaics are built in bench/out/ when missing (the gigapixel one takes minutes: last).
set -euo pipefail

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import os, torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
torch.cuda.get_device_name(), 'CPU cores', os.cpu_count())"

python -m bench.efficiency --device cuda --precision fp16 --layers 50 --size 4096 --batch-size 16
python -m bench.memory --device cuda --precision fp16 --model pspnet50 --classes 150 --sizes 10000
python -m bench.memory --device cuda --precision fp16 --model pspnet50 --classes 150 --sizes 10000 --stitch-on-host
python -m bench.memory --device cuda --sizes 4000 16000
python -m bench.memory --device cuda --precision fp16 --model pspnet50 --classes 150 --sizes 31623
