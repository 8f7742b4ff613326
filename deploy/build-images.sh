#!/usr/bin/env bash
# Build Protégé's two images from the repository root, after the static checks of
# deploy/check_images.py (same Ray and Python in both, COPY sources present, torch/vLLM pins
# consistent, the GPU driver requirement stated).
#
#   deploy/build-images.sh --check                        # checks, then print the build commands
#   deploy/build-images.sh --registry REG [--tag T] [--push] [--platform linux/amd64]
#
# protege     (deploy/Dockerfile.cpu): Ray head, CPU workers, the improver, MLflow.
# protege-gpu (deploy/Dockerfile.gpu): GPU workers (vLLM). Its torch is built for CUDA 13:
#             GPU nodes need an NVIDIA driver of the R580 branch or later.
# The tag defaults to the chart's appVersion, which is what the chart deploys by default.
set -euo pipefail
cd "$(dirname "$0")/.."

registry="" tag="" push=0 check=0 platform="linux/amd64"
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1 ;;
    --push) push=1 ;;
    --registry) registry="${2:?--registry needs a value}"; shift ;;
    --tag) tag="${2:?--tag needs a value}"; shift ;;
    --platform) platform="${2:?--platform needs a value}"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

tag="${tag:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' helm/protege/Chart.yaml)}"
prefix="${registry:+${registry%/}/}"
python="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

"$python" deploy/check_images.py

output="--load"
[ "$push" = 1 ] && output="--push"
commands=(
  "docker buildx build --platform $platform -f deploy/Dockerfile.cpu -t ${prefix}protege:$tag $output ."
  "docker buildx build --platform $platform -f deploy/Dockerfile.gpu -t ${prefix}protege-gpu:$tag $output ."
)
for command in "${commands[@]}"; do
  echo "+ $command"
  if [ "$check" = 0 ]; then
    $command
  fi
done
if [ "$check" = 1 ]; then
  echo "check only: nothing built"
fi
