#!/usr/bin/env bash
# Copies the train.py run folders into the zoo and renders their cards with the zoo's Hub ids.
# Usage: model_cards/build_zoo.sh RUNS_DIR   (RUNS_DIR holds c10lt-ce/ and c10lt-mixup/ run folders)
set -euo pipefail
runs=${1:?usage: build_zoo.sh RUNS_DIR}
cd "$(dirname "$0")"
limits=(
  --limitation "Trained on a CPU budget: a 30-epoch cosine stage 1 instead of the paper's 200 epochs, so top-1 is below the paper's 82.1% (CIFAR-10-LT IF100)."
  --limitation "CIFAR-10 images come from a public JPEG export (JPEG artefacts); expect a point or two less accuracy than on the PNG-exact data set."
  --limitation "One training seed and one long-tail split (data seed 0); no confidence intervals."
  --limitation "The test split was used only for this report, never for model selection (the last epoch is reported)."
  --limitation "32x32 CIFAR-10 classes only; not a general-purpose classifier."
)
build() {  # src name title
  rm -rf "$2"
  cp -r "$1" "$2"
  python -m mislas_timm.hub card "$2" --hub-id "mislas-timm/$2" --dataset-id uoft-cs/cifar10 --title "$3" "${limits[@]}"
  python -m mislas_timm.hub check "$2"
}
build "$runs/c10lt-ce/stage1" resnet32_cifar.cifar10_lt_if100_ce \
  "ResNet-32, CIFAR-10-LT IF100, stage 1 with plain cross-entropy (the over-confident baseline)"
build "$runs/c10lt-mixup/stage1" resnet32_cifar.cifar10_lt_if100_mixup \
  "ResNet-32, CIFAR-10-LT IF100, MiSLAS stage 1 (mixup)"
build "$runs/c10lt-mixup-rerun/stage2" resnet32_cifar.cifar10_lt_if100_mislas \
  "ResNet-32, CIFAR-10-LT IF100, MiSLAS (stage 2: label-aware smoothing + LWS head)"
