#!/usr/bin/env bash
# The wheels the lent GPU machine lacks for benchmarks/gpu_check.sh, downloaded here into .whl/
# (ignored by git; carried with run(..., carry=[".whl"])). That machine's python3 is CPython 3.12 on
# x86-64 and already holds torch, lightning, transformers, timm, torchmetrics, tensorboard, pyarrow,
# pandas and the rest of ablate_lit's needs except these (pure-Python wheels, about 2 MB together).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "jsonargparse==4.53.0" "docstring-parser==0.18.0" "typeshed-client==2.15.0" "omegaconf==2.4.0" \
  "datasets==5.2.0" "dill==0.4.1" "multiprocess==0.70.19"
ls -l .whl
