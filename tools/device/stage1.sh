#!/usr/bin/env bash
# On the device machine, first call: keep the first half of the model and install the carried wheels.
set -euo pipefail
mkdir -p /root/nlora-dev
cp .device/a/gguf.part00 .device/a/gguf.name /root/nlora-dev/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/nlora-dev/site \
    .device/a/*.whl
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU visible"
# as stage2.sh will import them: the carried wheels over the image's packages
PYTHONPATH=/root/nlora-dev/site python3 -c "import torch, transformers, peft, accelerate, gguf; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"
echo "stage1 done: $(ls /root/nlora-dev)"
