#!/usr/bin/env bash
# On the device machine, second call (while it is still warm): join the model, unpack the data, then run the
# given command with nlora from this tree. $MODEL and $DATA name the model file and the CL_Benchmark copy;
# results go under $OUT (the device tool brings them back).
#   bash tools/device/stage2.sh python benchmarks/methods_table.py --model '$MODEL' --data-dir '$DATA' --out '$OUT/t'
set -euo pipefail
D=/root/nlora-dev
[ -f $D/gguf.part00 ] || { echo "stage2.sh: run stage1.sh first, on the same warm machine" >&2; exit 2; }
export MODEL=$D/$(cat $D/gguf.name) DATA=$D/CL_Benchmark
cat $D/gguf.part00 .device/b/gguf.part01 > "$MODEL"
mkdir -p "$DATA" && tar -C "$DATA" -xzf .device/b/cl.tar.gz
export PYTHONPATH=$PWD/src:$D/site PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
cmd=$(eval echo "$*")
echo "running: $cmd"
eval "$cmd"
