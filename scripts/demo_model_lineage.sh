#!/usr/bin/env bash
# Rebuild the bundled demo model through every stage of its lineage, each stage with the project as it
# was when that stage was trained (a git worktree per commit; needs this repository's history):
#
#   bash scripts/demo_model_lineage.sh WORK [PHOTOS] [VIDEOS]
#
# 1. 1a00e00: from a structured initialisation, 100-token inputs, the 24 shared photos (1,500 steps).
# 2. 687d8c7 on a set written by 7fbb1cc's code (JPEG quality 95-3, noise sigma 5-50): the 'fragments'
#    canvas and visibility labels, --init stage 1, 1,400 steps, NCM loss 0.25.
# 3. 87aa5c8: 18 more photos from Debian packages (scripts/debian_photos.py), 9 sources held out by
#    name, cross-entropy only, --init stage 2 (2,800 steps).
# 4. c11aef1: JPEG block-edge filters implanted in stage 3's tower (--block-filters), a quarter of the
#    attribute-only images for the quality question, --init stage 3, 2,400 steps.
# 5. this tree: a chroma grain filter implanted in stage 4's tower (--grain-filter), --init stage 4,
#    2,400 steps; then 1,200 more at lr 1e-4, tower frozen.
# 6. this tree: brightness steps implanted in stage 5's tower (--exposure-steps), --init stage 5, 2,400
#    steps, tower frozen; installs into WORK/installed (not into the package).
#
# About 3.5 hours on 2 CPU cores. Each stage is seeded; runs on two threads are not guaranteed to be
# bit-identical to the shipped weights.
set -euo pipefail
WORK=$(realpath -m "${1:?usage: demo_model_lineage.sh WORK [PHOTOS] [VIDEOS]}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PHOTOS=$(realpath "${2:-$ROOT/../shared/data/photos}")
VIDEOS=$(realpath "${3:-$ROOT/../shared/data/videos}")
PYTHON=${PYTHON:-python}
mkdir -p "$WORK"

stage() {  # stage COMMIT FOLDER: a worktree of the project at COMMIT
    git -C "$ROOT" worktree add --detach "$WORK/$2" "$1" >/dev/null 2>&1 || test -d "$WORK/$2"
}

stage 1a00e00 tree-1
(cd "$WORK/tree-1" && OMP_NUM_THREADS=1 PYTHONPATH=src $PYTHON scripts/train_demo_model.py \
    --photos "$PHOTOS" --seed 0 --work "$WORK/stage-1" --install "$WORK/stage-1/installed")

stage 7fbb1cc tree-2a  # writes the stage-2 set (one training step, thrown away)
(cd "$WORK/tree-2a" && PYTHONPATH=src $PYTHON scripts/train_demo_model.py --photos "$PHOTOS" \
    --videos "$VIDEOS" --seed 0 --work "$WORK/stage-2" --install "$WORK/stage-2/set-only" --set max_steps=1)
stage 687d8c7 tree-2
(cd "$WORK/tree-2" && OMP_NUM_THREADS=2 PYTHONPATH=src $PYTHON scripts/train_demo_model.py --photos "$PHOTOS" \
    --videos "$VIDEOS" --seed 0 --work "$WORK/stage-2" --install "$WORK/stage-2/installed" \
    --init "$WORK/stage-1/installed" --threads 2 --set max_steps=1400)

$PYTHON "$ROOT/scripts/debian_photos.py" --out "$WORK/debian-photos"
stage 87aa5c8 tree-3
(cd "$WORK/tree-3" && OMP_NUM_THREADS=2 PYTHONPATH=src $PYTHON scripts/train_demo_model.py --photos "$PHOTOS" \
    "$WORK/debian-photos" --videos "$VIDEOS" --seed 0 --work "$WORK/stage-3" --install "$WORK/stage-3/installed" \
    --init "$WORK/stage-2/installed" --init-name "stage 2 of scripts/demo_model_lineage.sh" --threads 2)

stage c11aef1 tree-4  # stages 4 and 5 reuse stage 3's synthetic set (same settings)
(cd "$WORK/tree-4" && OMP_NUM_THREADS=2 PYTHONPATH=src $PYTHON scripts/train_demo_model.py --photos "$PHOTOS" \
    "$WORK/debian-photos" --videos "$VIDEOS" --seed 0 --work "$WORK/stage-3" --install "$WORK/stage-4/installed" \
    --init "$WORK/stage-3/installed" --init-name "stage 3 of scripts/demo_model_lineage.sh" --block-filters \
    --threads 2 --set max_steps=2400)

cd "$ROOT"
OMP_NUM_THREADS=2 $PYTHON scripts/train_demo_model.py --photos "$PHOTOS" "$WORK/debian-photos" --videos "$VIDEOS" \
    --seed 0 --work "$WORK/stage-3" --install "$WORK/stage-5/installed" --init "$WORK/stage-4/installed" \
    --init-name "stage 4 of scripts/demo_model_lineage.sh (JPEG block-edge filters implanted)" --grain-filter --threads 2 --set max_steps=2400
OMP_NUM_THREADS=2 $PYTHON scripts/train_demo_model.py --photos "$PHOTOS" "$WORK/debian-photos" --videos "$VIDEOS" \
    --seed 0 --work "$WORK/stage-3" --install "$WORK/stage-5/continued" --init "$WORK/stage-5/installed" \
    --init-name "stage 5 of scripts/demo_model_lineage.sh after its first 2,400 steps (grain filter implanted)" \
    --threads 2 --set max_steps=1200 --set learning_rate=1e-4 --set train_vision_tower=false
OMP_NUM_THREADS=2 $PYTHON scripts/train_demo_model.py --photos "$PHOTOS" "$WORK/debian-photos" --videos "$VIDEOS" \
    --seed 0 --work "$WORK/stage-3" --install "$WORK/installed" --init "$WORK/stage-5/continued" \
    --init-name "stage 5 of scripts/demo_model_lineage.sh" --exposure-steps --threads 2 --set max_steps=2400
