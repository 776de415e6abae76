#!/usr/bin/env bash
# Wheels the GPU check (scripts/device_check.sh) needs on a machine that cannot reach PyPI but has torch,
# transformers, peft, accelerate, safetensors, tabulate, pyyaml and pytest (Python 3.12, x86-64): the versions this
# checkout's CPU environment runs, downloaded into .whl/ (keep it out of git: `echo /.whl/ >> .git/info/exclude`).
# Run it where pip reaches PyPI; the check installs them with --no-index --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
WHEELS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        math-verify==0.9.0 latex2sympy2-extended==1.11.0 antlr4-python3-runtime==4.11.0
        trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
mkdir -p .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any; do
  platforms+=(--platform "$tag")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
  "${platforms[@]}" -d .whl "${WHEELS[@]}"
du -sh .whl
