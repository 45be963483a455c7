#!/usr/bin/env bash
# `make proto-check`: buf lint, buf breaking against every earlier state of protos/, and a
# check that gen/ is exactly what scripts/gen_protos.sh produces.
#
# Every commit that changed protos/ or buf.yaml is a contract clients may have been built
# against, so the working tree is compared with each of them (not only with the commit
# before: a break followed by any other commit would pass that). $PROTO_BASE (a git ref,
# e.g. origin/main) compares with that one state instead.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.local/venv/bin/python}"
buf="$(dirname "$python")/buf"

echo "== buf lint"
"$buf" lint

echo "== buf breaking"
bases=()
if [[ -n "${PROTO_BASE:-}" ]]; then
  bases=("$(git rev-parse --verify "$PROTO_BASE^{commit}")")
elif git rev-parse --verify -q HEAD >/dev/null; then
  if [[ "$(git rev-parse --is-shallow-repository)" == true ]]; then
    echo "warning: a shallow clone lacks earlier contracts; only the commits it has are" \
      "compared ('git fetch --unshallow' for all, or set PROTO_BASE)" >&2
  fi
  mapfile -t bases < <(git log --format=%H -- protos buf.yaml)
fi
checked=0
for base in "${bases[@]}"; do
  [[ -n "$(git ls-tree -r --name-only "$base" -- protos)" ]] || continue
  if ! "$buf" breaking --against ".git#ref=$base"; then
    echo "protos/ breaks the contract of $(git log -1 --format='%h (%s)' "$base"):" \
      "add fields with new numbers and leave existing ones as they are (or start a new" \
      "package version, telemetry.v2)" >&2
    exit 1
  fi
  checked=$((checked + 1))
done
if ((checked == 0)); then
  echo "no earlier contract to compare with: nothing can break yet"
else
  echo "compatible with the $checked earlier state(s) of protos/"
fi

echo "== gen/ is up to date"
fresh="$(mktemp -d)"
trap 'rm -rf "$fresh"' EXIT
PYTHON="$python" scripts/gen_protos.sh "$fresh"
# Python's bytecode caches are not generated code.
if ! diff -r -q -x __pycache__ "$fresh/telemetry" gen/telemetry >/dev/null; then
  diff -r -q -x __pycache__ "$fresh/telemetry" gen/telemetry || true
  echo "gen/ is stale: run 'make gen' and commit the result" >&2
  exit 1
fi
echo "proto-check passed"
