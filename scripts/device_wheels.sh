#!/usr/bin/env bash
# Wheels the GPU check (scripts/device_check.sh) needs on a machine that cannot reach PyPI but has torch,
# transformers, peft, accelerate, safetensors, tabulate, pyyaml and pytest (a CUDA image; Python 3.12, x86-64):
# the versions installed in the active environment (the ones this checkout is tested with), downloaded into .whl/
# (keep it out of git: `echo /.whl/ >> .git/info/exclude`). Run it where pip reaches PyPI, with the project's
# environment active; the check installs them with --no-index --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
NAMES='pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|math[-_]verify|latex2sympy2[-_]extended'
NAMES+='|antlr4[-_]python3[-_]runtime|trl|datasets|dill|multiprocess'
mapfile -t WHEELS < <(python3 -m pip freeze | grep -iE "^($NAMES)==")
if [ "${#WHEELS[@]}" -ne 11 ]; then
  echo "expected 11 packages in this environment, found: ${WHEELS[*]}" >&2
  exit 1
fi
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any; do
  platforms+=(--platform "$tag")
done
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" --implementation cp \
  "${platforms[@]}" -d .whl "${WHEELS[@]}"
du -sh .whl
