#!/usr/bin/env bash
# On the device machine, first call: keep the first half of the model and install the carried wheels.
set -euo pipefail
mkdir -p /root/nlora-dev
cp .device/a/gguf.part00 .device/a/gguf.name /root/nlora-dev/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/nlora-dev/site \
    .device/a/*.whl
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU visible"
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
echo "stage1 done: $(ls /root/nlora-dev)"
