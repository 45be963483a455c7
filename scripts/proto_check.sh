#!/usr/bin/env bash
# `make proto-check`: buf lint, buf breaking against the previous state of protos/,
# and a check that gen/ is exactly what scripts/gen_protos.sh produces.
#
# The breaking baseline is $PROTO_BASE when set (a git ref, e.g. origin/main), else
# HEAD when protos/ has uncommitted changes, else HEAD~1 (the change being checked
# is the last commit, as in CI on a fresh clone of main).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.local/venv/bin/python}"
buf="$(dirname "$python")/buf"

echo "== buf lint"
"$buf" lint

echo "== buf breaking"
base="${PROTO_BASE:-}"
if [[ -z "$base" ]]; then
  if ! git rev-parse --verify -q HEAD >/dev/null; then
    base=""
  elif [[ -n "$(git status --porcelain -- protos buf.yaml)" ]]; then
    base="HEAD"
  else
    base="HEAD~1"
  fi
fi
if [[ -z "$base" ]] || ! git rev-parse --verify -q "$base^{commit}" >/dev/null; then
  echo "no earlier commit to compare with (${base:-no commits}): nothing can break yet"
elif [[ -z "$(git ls-tree -r --name-only "$base" -- protos)" ]]; then
  echo "protos/ does not exist at $base: nothing can break yet"
else
  echo "against $base ($(git rev-parse --short "$base"))"
  "$buf" breaking --against ".git#ref=$(git rev-parse "$base")"
fi

echo "== gen/ is up to date"
fresh="$(mktemp -d)"
trap 'rm -rf "$fresh"' EXIT
PYTHON="$python" scripts/gen_protos.sh "$fresh"
if ! diff -r -q "$fresh/telemetry" gen/telemetry >/dev/null; then
  diff -r -q "$fresh/telemetry" gen/telemetry || true
  echo "gen/ is stale: run 'make gen' and commit the result" >&2
  exit 1
fi
echo "proto-check passed"
