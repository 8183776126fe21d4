#!/usr/bin/env bash
# The long training runs behind the zoo and BENCHMARKS.md, as they were started on the 2-core CPU
# machines: each in the background, one thread each (two at a time share the 2 cores), always with
# --resume so that the same line continues a stopped run from its last complete epoch.
#
#   benchmarks/paper_runs.sh CODE_DIR DATA_DIR RUNS_DIR NAME
#
# IF-mixup-s2-seedN (e.g. if10-mixup-s2-seed1) retrains only the MiSLAS stage 2 of IF-mixup with
# training seed N, on the same stage 1: the spread of stage 2 over seeds; IF-mixup-seedN trains both
# stages again with training seed N (the data seed, hence the kept images, stays 0); if100-bsm-mixup-seedN
# likewise for the Balanced Softmax run (issue 21's candidate recipe).
# A NAME ending in -png runs the recipe of NAME without it (cRT / LWS start from if100-mixup-png); pass the PNG-exact CIFAR-10 of benchmarks/cifar10_png.py as
# DATA_DIR (the JPEG copy and the PNG copy then differ in nothing but the compression).
# CODE_DIR: a checkout frozen at one commit (git worktree add), so later edits do not change a
# running job; DATA_DIR: CIFAR-10 in the uoft-cs/cifar10 schema; RUNS_DIR: outside the repository.
set -euo pipefail
code=${1:?CODE_DIR}; data=${2:?DATA_DIR}; runs=${3:?RUNS_DIR}; name=${4:?NAME}
py=${PYTHON:-python}
recipe=${name%-png}; suffix=${name#"$recipe"}
if [[ $recipe =~ ^if([0-9]+)-mixup-s2-seed([0-9]+)$ ]]; then  # stage-2 seed spread: MiSLAS stage 2, seed N
  args=(--preset "cifar10-lt-if${BASH_REMATCH[1]}" --stage 2 --init "$runs/if${BASH_REMATCH[1]}-mixup$suffix/stage1"
        --set "seed=${BASH_REMATCH[2]}")
elif [[ $recipe =~ ^if([0-9]+)-mixup-seed([0-9]+)$ ]]; then   # both stages again, seed N
  args=(--preset "cifar10-lt-if${BASH_REMATCH[1]}" --set "seed=${BASH_REMATCH[2]}")
elif [[ $recipe =~ ^if100-bsm-mixup-seed([0-9]+)$ ]]; then   # the Balanced Softmax run of the table, seed N
  args=(--preset cifar10-lt-if100 --set stage1.loss=balanced_softmax --set "seed=${BASH_REMATCH[1]}")
else
case "$recipe" in
  if100-mixup)  args=(--preset cifar10-lt-if100) ;;                                  # stage 1 mixup + MiSLAS stage 2
  if100-ce)     args=(--preset cifar10-lt-if100 --stage 1 --set stage1.mixup_alpha=0) ;;
  if50-mixup)   args=(--preset cifar10-lt-if50) ;;
  if10-mixup)   args=(--preset cifar10-lt-if10) ;;
  if100-bsm-mixup) args=(--preset cifar10-lt-if100 --set stage1.loss=balanced_softmax) ;;
  if100-crt)    args=(--preset cifar10-lt-if100 --stage 2 --init "$runs/if100-mixup$suffix/stage1"
                      --set stage2.head=crt --set stage2.loss=ce) ;;                    # cRT on the mixup stage 1
  if100-lws)    args=(--preset cifar10-lt-if100 --stage 2 --init "$runs/if100-mixup$suffix/stage1"
                      --set stage2.head=lws --set stage2.loss=ce) ;;                    # LWS on the mixup stage 1
  if100-mixup-50ep) args=(--preset cifar10-lt-if100 --stage 1 --set stage1.epochs=50
                      --set 'stage1.milestones=[40,45]') ;;                               # control: vs reference_loop.py
  if100-mixup-50ep-wd5e-4) args=(--preset cifar10-lt-if100 --stage 1 --set stage1.epochs=50
                      --set 'stage1.milestones=[40,45]' --set stage1.weight_decay=5e-4) ;;  # labelled: the authors' advice
  cpu-fp32)     args=(--preset cifar10-lt-if100-cpu --mixed-precision no) ;;           # equal-budget precision ablation
  cpu-bf16)     args=(--preset cifar10-lt-if100-cpu --mixed-precision bf16) ;;
  *) echo "unknown run $name" >&2; exit 2 ;;
esac
fi
mkdir -p "$runs/$name"
cd "$code"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH="$code" nohup "$py" train.py "${args[@]}" --dataset "$data" \
  --output-dir "$runs/$name" --resume >> "$runs/$name.out" 2>&1 &
echo "started $name (pid $!): tail -f $runs/$name/train.log"
