#!/usr/bin/env bash
# Train a small PSPNet with `segtile train`, segment with it, score it with `segtile eval`, then
# resume the run for more epochs: the whole cycle on the bundled nuclei image, a few minutes on a
# laptop CPU. Usage (from anywhere, segtile installed):  examples/train_and_evaluate.sh [OUTPUT_FOLDER]
#
# The labels are committed in examples/data (examples/make_demo_labels.py writes them): rows 0-383
# of nuclei_img2d.tif are labelled for training, rows 384-511 are held out for the evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-segtile-training-example}
mkdir -p "$out"

# 1. Train 5 epochs of 25 steps: PSPNet-18 at 1/8 width, 128 px windows, 10 % of the labelled
#    blocks held out for the validation mIoU printed after each epoch.
segtile train --image examples/data/nuclei_img2d.tif --labels examples/data/nuclei_labels_train.tif \
    --classes background,nucleus --colors "#000000,#ffd700" --out "$out/nuclei.pt" \
    --layers 18 --width 0.125 --tile-size 128 --epochs 5 --steps-per-epoch 25 --overwrite

# 2. Segment the whole image with it, and score the held-out rows.
segtile examples/data/nuclei_img2d.tif --model "$out/nuclei.pt" --out "$out/nuclei_mask.tif" --overwrite
segtile eval "$out/nuclei_mask.tif" examples/data/nuclei_labels_heldout.tif

# 3. Continue the same run to 10 epochs (the checkpoint holds the optimiser and the step), and score again.
segtile train --image examples/data/nuclei_img2d.tif --labels examples/data/nuclei_labels_train.tif \
    --resume "$out/nuclei.pt" --epochs 10 --out "$out/nuclei.pt" --overwrite
segtile examples/data/nuclei_img2d.tif --model "$out/nuclei.pt" --out "$out/nuclei_mask.tif" --overwrite
segtile eval "$out/nuclei_mask.tif" examples/data/nuclei_labels_heldout.tif --json
