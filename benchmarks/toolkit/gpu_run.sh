#!/usr/bin/env bash
# The toolkit's equal-budget run on one GPU machine (how benchmarks/table7.md's figures were made).
# Every recipe gets BUDGET minutes of wall-clock training, PARALLEL trainings at a time sharing
# the GPU, then is scored on the first 100 test trajectories in grid and points mode.
# Usage (repository root, python3 with torch + CUDA): OUT=/some/dir bash benchmarks/toolkit/gpu_run.sh
# Writes OUT/results.tar.gz (summaries, metadata, curves, validation logs) and
# OUT/weights.tgz.part-* (best checkpoints of 10 MB or less; variants and derefnet-gpu left out).
set -u
export PYTHONUNBUFFERED=1
BUDGET=${BUDGET:-2.5}
PARALLEL=${PARALLEL:-13}
TRAIN_LIMIT_S=${TRAIN_LIMIT_S:-500}
RUNS=runs/gpu
DEVICE=${DEVICE:-cuda}
RECIPES=${RECIPES:-rdn,esrgan,bsrgan,gmfn,srgan,tdan,lista,liht,lamp,tilista,lista-faithful,liht-faithful,\
lamp-faithful,tilista-faithful,dbpn,usrnet,istanet_pp,rpcanet,istanet_plus,fistanet,istanet,\
edsr,srcnn,espcn,derefnet-gpu,fastunmix}

if [ -d .whl ]; then  # packages the machine lacks (pydantic), carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
mkdir -p "$RUNS"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  nproc; } > "$RUNS/machine.txt" 2>&1
generate() {  # generate DIR ARGS...: the dataset DIR unless it exists
  local dir=$1; shift
  [ -f "$dir/test.npz" ] || python3 -m sim generate --out "$dir" --trajectories 5000 \
    --format npz --quiet "$@" >> "$RUNS/generate.log" 2>&1 || { cat "$RUNS/generate.log"; exit 1; }
  sha256sum "$dir"/*.npz >> "$RUNS/data.sha256"
}
generate data/seqcsist-s2026 --seed 2026
case ",$RECIPES," in *-robust,*) generate data/seqcsist-s2026-2to8 --seed 2027 --targets 2-8;; esac
timeout -k 15 "$TRAIN_LIMIT_S" python3 -m models train-many --models "$RECIPES" \
  --budget-minutes "$BUDGET" --device "$DEVICE" --parallel "$PARALLEL" --test-trajectories 100 \
  --set threads=1 --set checkpoint_every_steps=1000000000 --out "$RUNS" 2>&1 \
  | grep -v -i "warning" | tee "$RUNS/train-many.log"

# metrics.jsonl: every validation line and every 50th step line
for f in "$RUNS"/*/metrics.jsonl; do
  awk '/"val"/ || NR % 50 == 1' "$f" > "${f%.jsonl}.thin.jsonl"
done
tar czf "$OUT/results.tar.gz" "$RUNS"/*.txt "$RUNS"/*.log "$RUNS"/*.json "$RUNS"/data.sha256 \
  "$RUNS"/*/best.json "$RUNS"/*/curve.png "$RUNS"/*/config.yaml "$RUNS"/*/metrics.thin.jsonl
# best checkpoints small enough to ship, in parts of 15 MiB (what comes back is capped at 16 MiB
# a file): cat weights.tgz.part-* | tar xzf -
find "$RUNS" -name best.pt -size -10240k | grep -v -e faithful -e derefnet-gpu | sort \
  | tar czf - -T - | split -b 15M - "$OUT/weights.tgz.part-"
ls -la "$OUT"
