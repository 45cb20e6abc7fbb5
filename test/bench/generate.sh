#!/usr/bin/env bash
# test/bench/generate.sh - text generation speed of peft's decoder against
# llama.cpp (llama-cpp-python, built from source by pip in the benchmark's
# virtual environment) and transformers (FP32, the GGUF dequantized), side by
# side on the same GGUF file and thread count (generate_bench.py).
#
#   test/bench/generate.sh [THREADS] [GGUF]
#
# THREADS: default every core.  GGUF: default SmolLM2-135M-Instruct Q4_1
# (scripts/fetch_model --decoder).  The virtual environment:
# $PEFT_BENCH_VENV, default ${XDG_CACHE_HOME:-~/.cache}/peft/bench-venv,
# made on first use (llama-cpp-python takes about 5 minutes to build on two
# cores); $PEFT_BENCH_PYTHON instead uses a Python that has the packages.
# $PEFT_BENCH_PEERS (default "llama.cpp transformers") chooses the peers.
# Output: a table, and build/bench/generate.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${1:-$(nproc)}
GGUF=${2:-$(scripts/fetch_model --decoder)}
if [ -n "${PEFT_BENCH_PYTHON:-}" ]; then
	PY=$PEFT_BENCH_PYTHON
else
	VENV=${PEFT_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/peft/bench-venv}
	if [ ! -x "$VENV/bin/python" ]; then
		python3 -m venv "$VENV"
	fi
	PY=$VENV/bin/python
	# llama.cpp is built for this CPU (-march=native) less AMX: on a VM whose
	# kernel grants no AMX state, llama.cpp's AMX build dies with SIGILL (seen
	# here on a Sapphire Rapids guest); AMX does not matter at batch 1.
	NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
	"$PY" -c 'import llama_cpp, transformers, torch, gguf, numpy' 2>/dev/null ||
		CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'" \
			"$PY" -m pip install -q llama-cpp-python transformers torch gguf numpy
fi
make -s -j"$(nproc)" peft-engine >/dev/null
mkdir -p build/bench
# torch and llama.cpp size their own pools; OpenBLAS is not used by decoding.
"$PY" test/bench/generate_bench.py "$PWD/peft-engine" "$GGUF" "$THREADS" build/bench/generate.json
