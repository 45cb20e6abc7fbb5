#!/usr/bin/env bash
# test/bench/check_export.sh - the full check of our PEFT exports, with Python:
# adapters built by the engine (LoRA, DoRA, (IA)^3, LoRA + BitFit as PEFT's
# bias "all", prompt and prefix tuning; every value perturbed) are exported
# with the engine's last hidden states on 16 sentences, loaded into Hugging
# Face PEFT by test/fixtures/check_export.py, which fails on any missing,
# unexpected or mis-shaped tensor, and PEFT's hidden states are compared
# with ours.  Not part of ./test/run (it needs PyTorch and PEFT); the test
# command checks the names, shapes, dtypes and configs without Python
# (test/unit/test_export_peft.c).
#
#   test/bench/check_export.sh [TOL]        (default 1e-4)
#
# Environment: PEFT_REF_PYTHON (default /work/venv-ref/bin/python, a venv
# with torch, transformers, peft and safetensors), PEFT_MODEL_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOL=${1:-1e-4}
PY=${PEFT_REF_PYTHON:-/work/venv-ref/bin/python}
MODEL=${PEFT_MODEL_DIR:-$(scripts/fetch_model)}
OUT=$(mktemp -d /tmp/peft-export.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
make -s -j"$(nproc)" PEFT_CUDA=0 build/unit/test_methods_reference >/dev/null
PEFT_MODEL_DIR=$MODEL PEFT_EXPORT_DIR=$OUT build/unit/test_methods_reference >"$OUT/unit.log" 2>&1 ||
	{ cat "$OUT/unit.log"; exit 1; }
failed=0
for dir in "$OUT"/own_*; do
	[ -d "$dir" ] || continue
	name=${dir##*/own_}
	# run from outside the repository: import peft must not find our peft.so
	if line=$(cd /tmp && HF_HUB_OFFLINE=1 "$PY" "$OLDPWD/test/fixtures/check_export.py" --model "$MODEL" \
		--tol "$TOL" "$dir" "$dir/outputs.safetensors" 2>&1 | grep -E '^(hidden|embeddings|FAIL|ERROR)'); then
		printf '%-12s %s\n' "$name" "$(echo "$line" | tr '\n' ' ')"
	else
		printf '%-12s FAILED\n' "$name"
		failed=1
	fi
done
[ "$(ls -d "$OUT"/own_* 2>/dev/null | wc -l)" -ge 6 ] || { echo "fewer than 6 adapters exported"; exit 1; }
exit $failed
