#!/usr/bin/env bash
# test/mutate.sh - break the engine on purpose and check that the tests notice.
#
#   test/mutate.sh              every mutation below
#   test/mutate.sh NAME...      only those
#   test/mutate.sh --list       list the mutations
#
# Each mutation replaces one literal piece of source text (found exactly
# once, or the script stops before building anything) in a scratch copy of
# the working tree (tracked and untracked files, not ignored ones), builds
# the unit tests there (make PEFT_CUDA=0 unit), runs every unit binary with
# the real model present (CI=true, so nothing that needs it may skip), and
# restores the file.  A mutation is caught when at least one test fails or
# a binary crashes or times out.  The unmutated copy must pass first.
# Prints a Markdown table of the results; exits 0 when every mutation was
# caught, 1 when one was not, 2 on a usage or setup error.  Not part of
# test/run: it takes about 12 minutes on two cores.
#
# Environment: PEFT_MODEL_DIR (else scripts/fetch_model's folder),
# MUTATE_TIMEOUT (seconds per test binary, 600), MUTATE_KEEP=1 keeps the
# scratch copy.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TIMEOUT=${MUTATE_TIMEOUT:-600}
JOBS=$(nproc 2>/dev/null || echo 2)

# name|area|file|text|replacement: one literal replacement each.
MUTATIONS=$(cat <<'EOF'
ln-eps-nan|network|src/engine/models/network.c|eps = (real) cfg->layer_norm_eps;|eps = (real) NAN;
ln-eps-1e-5|network|src/engine/models/network.c|eps = (real) cfg->layer_norm_eps;|eps = (real) 1e-5;
attention-scale-1-over-d|network|src/engine/ops/ops_varlen.c|a->score_scale = (real) (1.0 / sqrt((double) a->HS));|a->score_scale = (real) (1.0 / (double) a->HS);
clip-off|optimizer|src/engine/models/network.c|if (max_norm > 0)|if (max_norm < 0)
beta2-0.99|optimizer|src/engine/training/trainer.c|o->beta2 = 0.999;|o->beta2 = 0.99;
no-weight-decay|optimizer|src/engine/ops/ops_cpu.c|args.decay = (real) (1.0 - (double) lr * (double) weight_decay);|args.decay = 1;
adam-eps-in-sqrt|optimizer|src/engine/ops/ops_cpu.c|denom = sqrt_real(vi) / a->bc2_sqrt + a->eps;|denom = sqrt_real(vi / (a->bc2_sqrt * a->bc2_sqrt) + a->eps);
grad-accum-sum|optimizer|src/engine/training/trainer.c|(real) (1.0 / in_step)|(real) 1.0
schedule-shift|schedule|src/engine/training/trainer.c|schedule_factor(o, tr->step, tr->total_steps)|schedule_factor(o, tr->step + 1, tr->total_steps)
warmup-floor|schedule|src/engine/training/trainer.c|return (int) ceil(o->warmup_ratio * total_steps);|return (int) floor(o->warmup_ratio * total_steps);
tok-punct-joined|tokenizer|src/engine/tokenizers/tokenizer.c|case ASCII_PUNCT:|case ASCII_PUNCT + 100:
tok-cjk-joined|tokenizer|src/engine/tokenizers/tokenizer.c|chinese = tok->opts.split_chinese && is_chinese_char(cp);|chinese = false;
tok-no-##-prefix|tokenizer|src/engine/tokenizers/tokenizer.c|found = vocab_find(tok, start > 0, |found = vocab_find(tok, false, 
st-end-past-data|safetensors validation|src/engine/formats/safetensors.c|if (*end > data_len)|if (*end > data_len + 8)
st-overlap-allowed|safetensors validation|src/engine/formats/safetensors.c|if (spans[i].begin < spans[i - 1].end)|if (spans[i].begin < spans[i - 1].begin)
st-span-too-long|safetensors validation|src/engine/formats/safetensors.c|if (*end - *begin != nbytes)|if (*end - *begin < nbytes)
adapter-alpha-is-r|adapter serialisation|src/engine/formats/adapter_io.c|cJSON_AddNumberToObject(root, "lora_alpha", lo->alpha);|cJSON_AddNumberToObject(root, "lora_alpha", lo->r);
adapter-nan-accepted|adapter serialisation|src/engine/formats/adapter_io.c|if (!isfinite(dst[j]))|if (0)
adapter-extra-tensors|adapter serialisation|src/engine/formats/adapter_io.c|if (file->ntensors - unused != ps->count)|if (file->ntensors - unused < ps->count)
EOF
)

# Count (mode "count") or make (mode "apply") the replacement in file; fails unless the text occurs exactly once.
replace_once() {
	python3 - "$@" <<'PY'
import sys
mode, path, text, replacement = sys.argv[1:]
with open(path, encoding="utf-8") as f:
    source = f.read()
n = source.count(text)
if n != 1:
    sys.exit(f"{path}: the text to mutate occurs {n} times, not once: {text}")
if mode == "apply":
    with open(path, "w", encoding="utf-8") as f:
        f.write(source.replace(text, replacement))
PY
}

# Run every unit binary of the scratch build; sets FAILED (count) and FAILURES (names).
run_unit() {
	local bin out rc f names
	FAILED=0
	FAILURES=""
	for bin in build/unit/*; do
		[ -x "$bin" ] || continue
		out="$LOGS/$1-$(basename "$bin").log"
		timeout "$TIMEOUT" "$bin" >"$out" 2>&1
		rc=$?
		f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$out" | tail -1)
		f=${f:-0}
		names=$(sed -n 's/^\[  FAILED  \] \(test_[A-Za-z0-9_]*\)$/\1/p' "$out" | sort -u | tr '\n' ' ')
		# name up to three failing tests of a binary, count the rest
		[ "$f" -gt 3 ] && names="$f tests"
		if [ "$rc" = 124 ]; then
			f=1
			names="(timeout)"
		elif [ "$rc" != 0 ] && [ "$f" = 0 ]; then
			f=1
			names="(exit $rc)"
		fi
		if [ "$f" != 0 ]; then
			FAILED=$((FAILED + f))
			FAILURES="$FAILURES${FAILURES:+;} $(basename "$bin"): ${names% }"
		fi
	done
}

if [ "${1:-}" = "--list" ]; then
	echo "$MUTATIONS" | awk -F'|' '{printf "%-22s %-24s %s\n", $1, $2, $3}'
	exit 0
fi

# The selected mutations, each checked against the tree before anything is built.
SELECTED=""
while IFS= read -r line; do
	IFS='|' read -r name area file text replacement <<<"$line"
	if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qxF -- "$name"; then
		continue
	fi
	[[ $name =~ ^[A-Za-z0-9._#+-]+$ ]] || { echo "mutation name \"$name\" is not a plain file name" >&2; exit 2; }
	replace_once count "$file" "$text" "$replacement" || exit 2
	SELECTED="$SELECTED$line"$'\n'
done <<<"$MUTATIONS"
for want in "$@"; do
	echo "$MUTATIONS" | cut -d'|' -f1 | grep -qxF -- "$want" || { echo "unknown mutation: $want" >&2; exit 2; }
done

MODEL=${PEFT_MODEL_DIR:-$(scripts/fetch_model --print-dir 2>/dev/null || true)}
if [ -z "$MODEL" ] || [ ! -f "$MODEL/model.safetensors" ]; then
	echo "test/mutate.sh needs the real model: run scripts/fetch_model or set PEFT_MODEL_DIR" >&2
	exit 2
fi
export PEFT_MODEL_DIR=$MODEL CI=true

START=$(date +%s)
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/peft-mutate.XXXXXX")
LOGS=$SCRATCH/logs
[ "${MUTATE_KEEP:-}" = 1 ] || trap 'rm -rf "$SCRATCH"' EXIT
mkdir -p "$SCRATCH/tree" "$LOGS"
git ls-files -z --cached --others --exclude-standard |
	tar -cf - --null -T - --ignore-failed-read 2>/dev/null | tar -xf - -C "$SCRATCH/tree"
python3 test/fixtures/make_tiny_model.py "$SCRATCH/tiny-model" >"$LOGS/tiny-model.log" 2>&1 ||
	{ echo "could not generate the tiny model" >&2; exit 2; }
export PEFT_TINY_MODEL_DIR=$SCRATCH/tiny-model
cd "$SCRATCH/tree"

echo "scratch copy: $SCRATCH/tree; model: $MODEL" >&2
echo "building and running the unmutated tree" >&2
if ! make -j"$JOBS" PEFT_CUDA=0 unit >"$LOGS/build-baseline.log" 2>&1; then
	tail -20 "$LOGS/build-baseline.log" >&2
	exit 2
fi
run_unit baseline
if [ "$FAILED" != 0 ]; then
	echo "the unmutated tree fails:$FAILURES (logs in $LOGS; MUTATE_KEEP=1 keeps them)" >&2
	exit 2
fi

TABLE="| mutation | area | file | caught | failing tests |"$'\n'"|---|---|---|---|---|"$'\n'
CAUGHT=0
TOTAL=0
while IFS= read -r line; do
	[ -n "$line" ] || continue
	IFS='|' read -r name area file text replacement <<<"$line"
	TOTAL=$((TOTAL + 1))
	echo "[$TOTAL] $name: $file" >&2
	cp "$file" "$SCRATCH/pristine"
	replace_once apply "$file" "$text" "$replacement" || exit 2
	if ! make -j"$JOBS" PEFT_CUDA=0 unit >"$LOGS/build-$name.log" 2>&1; then
		result="NO (does not build)"
		FAILURES=" see $LOGS/build-$name.log"
	else
		run_unit "$name"
		if [ "$FAILED" != 0 ]; then
			result="yes ($FAILED)"
			CAUGHT=$((CAUGHT + 1))
		else
			result="**NO**"
		fi
	fi
	# a fresh copy (new mtime), so make rebuilds the object from the original
	cp "$SCRATCH/pristine" "$file"
	echo "    $result:$FAILURES" >&2
	TABLE="$TABLE| \`$name\` | $area | \`${file#src/engine/}\` | $result |${FAILURES:- } |"$'\n'
done <<<"$SELECTED"

printf '%s' "$TABLE"
echo
echo "$CAUGHT of $TOTAL mutations caught in $(( $(date +%s) - START )) s"
[ "$CAUGHT" = "$TOTAL" ]
