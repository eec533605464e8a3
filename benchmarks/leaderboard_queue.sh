#!/usr/bin/env bash
# Issue 18's leaderboard work, in the order it matters (docs/benchmarks.md): the paper's comparison first (4 and
# 10 tasks, the budget question), the soft-prompt methods last. Several copies share it: each skips a run
# another copy holds, and a line with nothing left returns at once. Flags go to every line, e.g.
#   benchmarks/leaderboard_queue.sh --threads 1 --until 17:05 --fill  # a CPU runner (start a second 30 s later)
#   benchmarks/leaderboard_queue.sh --device cuda --records R --runs D  # tools/device/leaderboard.sh, per worker
# --until: no run is started that would end after it (a session's end).
# --fill (the queue's own flag, with --until): once nothing more fits before --until, go through the queue
# again without it, so the first run still missing starts and trains until the session's end stops it, where
# the core would otherwise stand idle; its step checkpoints (every 10 steps) let the next session on this
# machine resume it (a new machine starts it again).
# A line that fails is reported by leaderboard.py and the queue goes on with the next one. PYTHON: the
# interpreter (default: python); the code run is this tree's src/.
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
lb() { "${PYTHON:-python}" benchmarks/leaderboard.py "$@"; }
core="seq-lora,inc-lora,mtl,n-lora,o-lora"

queue() {
  # The selections these runs need, then the runs; both again after the second selection, since a run line
  # skips a method whose choice still lies on an end of its grid (select extends it first).
  for _ in 1 2; do
    lb select "$@" --methods n-lora,o-lora,clora
    lb run "$@" --sequence 4task --methods "$core" --seeds 1,2,3
    lb run "$@" --sequence 4task --methods n-lora,o-lora --seeds 1,2,3 --epochs 3  # the budget question
  done
  # the methods already selected whose validation AA lies above the chosen o-lora's (docs/leaderboard.md, the
  # selection table): their seeds may name a new best, which the best-five 10-task line further down takes
  lb run "$@" --sequence 4task --methods clora,ewc,l2 --seeds 1,2,3
  lb run "$@" --sequence 10task --methods seq-lora,inc-lora,o-lora,n-lora,mtl --seeds 1,2
  # ewc, the 4-task best with five seeds, before the other methods' selections: of the best five it is the one
  # most likely to pass o-lora on 10 tasks, the answer issue 18's goal waits on (the best-five line skips it then)
  lb run "$@" --sequence 10task --methods ewc --seeds 1,2
  lb select "$@" --methods lwf,replay,migu-lora,sapt-arm,seq-ft,migu
  lb run "$@" --sequence 4task --methods all --seeds 1,2,3  # every method with a final choice or no knob
  lb select "$@"                                            # the rest: the soft-prompt methods' learning rates
  lb run "$@" --sequence 4task --methods all --seeds 1,2,3
  lb run "$@" --sequence 10task --methods seq-lora,inc-lora,o-lora,n-lora,mtl,best5 --seeds 1,2
  # past the plan: more seeds where the best is not yet ahead beyond the seed spread (TIE_BREAK_SEEDS)
  lb run "$@" --sequence 4task --methods tied --seeds 4,5
  lb run "$@" --sequence 10task --methods tied --seeds 3
}

fill=0 until=0 flags=() open=()  # open: the flags without --until, for the fill pass
while (($#)); do
  case "$1" in
    --fill) fill=1 ;;
    --until) until=1 flags+=("$1" "${2-}") && shift ;;
    --until=*) until=1 flags+=("$1") ;;
    *) flags+=("$1") open+=("$1") ;;
  esac
  shift
done
if ((fill && !until)); then
  echo "leaderboard_queue.sh: --fill needs --until (without it the queue already runs to its end)" >&2
  exit 2
fi
queue "${flags[@]}"
if ((fill)); then
  echo "[queue] nothing more fits before --until: filling with the next run still missing, until stopped" >&2
  queue "${open[@]}"
fi
