#!/usr/bin/env bash
# Generates the Python code for protos/ into the folder given (default gen/):
# messages, gRPC stubs and mypy type stubs. `make gen` and `make proto-check` call it.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gen}"
python="${PYTHON:-.local/venv/bin/python}"
venv_bin="$(dirname "$python")"
mapfile -t protos < <(find protos -name '*.proto' | sort)
rm -rf "$out/telemetry"
mkdir -p "$out"
PATH="$venv_bin:$PATH" "$python" -m grpc_tools.protoc -I protos \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  "${protos[@]}" 2> >(grep -v "^Writing mypy to" >&2)
# Package markers so the generated code installs and type-checks as the package `telemetry`.
find "$out/telemetry" -type d -exec touch {}/__init__.py \;
touch "$out/telemetry/py.typed"
