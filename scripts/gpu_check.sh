#!/usr/bin/env bash
# Every GPU measurement of BENCHMARKS.md in one command, on a machine with no network, where jax
# (CUDA) is installed and the four MNIST IDX files have been copied in (no TensorFlow needed):
#
#   bash scripts/gpu_check.sh [--idx-dir mnist-idx] [--torch-script PATH] [--out gpu-check]
#   bash scripts/gpu_check.sh --cpu     # a quick dry run of the same steps on the CPU
#
# Runs `pytest -m gpu`; scripts/bench.py for the lab recipe (cold, then warm compilation cache),
# with TF32 and without determinism (their effect on speed), and for the improved and resnet
# presets; scripts/seeds_together.py (several seeds in one vmapped program); and the
# lab's PyTorch script on the same card when torch is installed. Writes every figure to
# <out>/summary.json and prints a short summary against the targets.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=gpu idx=mnist-idx torch_script=reference/lab_pytorch.py out=gpu-check
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) mode=cpu ;;
    --idx-dir) idx=$2; shift ;;
    --torch-script) torch_script=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (see the comment at the top)." >&2; exit 2 ;;
  esac
  shift
done
[ -d "$idx" ] || { echo "gpu_check.sh: --idx-dir $idx is not a folder; copy the four MNIST IDX files there." >&2; exit 1; }
mkdir -p "$out"
cache=$(mktemp -d)  # a cold compilation cache, then warm for the second lab run
trap 'rm -rf "$cache"' EXIT
if [ "$mode" = cpu ]; then
  export JAX_PLATFORMS=cpu
  quick=(--limit 2000) lab_epochs=(--epochs 1) improved_epochs=(--epochs 2) torch_epochs=1
  seeds=(--limit 2000 --steps 10 --seeds 0 1)
else
  quick=() lab_epochs=() improved_epochs=() torch_epochs=5 seeds=(--seeds 0 1 2 3)
fi
bench() {  # bench NAME FLAGS...: one in-process measurement into <out>/NAME.json, or why it failed
  local name=$1; shift
  echo "== bench $name"
  # A failure (the deterministic step not compiling, say) is a finding, not the end of the check.
  if ! timeout 300 python scripts/bench.py --idx-dir "$idx" --cache-dir "$cache" --out "$out/$name.json" "${quick[@]}" "$@" \
      > "$out/$name.log" 2>&1; then
    python -c 'import json, sys; print(json.dumps({"failed": sys.argv[1]}))' "$(tail -n 1 "$out/$name.log")" > "$out/$name.json"
  fi
}

echo "== pytest -m gpu"
timeout 300 python -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tail -3 | tee "$out/pytest.txt"
bench lab "${lab_epochs[@]}"
bench lab-warm-cache "${lab_epochs[@]}"
bench lab-tf32 "${lab_epochs[@]}" --precision tf32
bench lab-nondeterministic "${lab_epochs[@]}" --no-deterministic
bench improved --recipe improved "${improved_epochs[@]}"
bench resnet --recipe resnet "${improved_epochs[@]}"
echo "== seeds together (jax.vmap)"
if ! timeout 300 python scripts/seeds_together.py --idx-dir "$idx" --out "$out/seeds.json" "${seeds[@]}" > "$out/seeds.log" 2>&1; then
  python -c 'import json, sys; print(json.dumps({"failed": sys.argv[1]}))' "$(tail -n 1 "$out/seeds.log")" > "$out/seeds.json"
fi

if python -c "import torch, torchvision" 2>/dev/null && [ -f "$torch_script" ]; then
  echo "== the lab's PyTorch script"
  raw="$cache/torch/MNIST/raw"; mkdir -p "$raw"
  for f in "$idx"/*-ubyte*; do
    name=$(basename "$f" .gz)
    case "$f" in *.gz) gunzip -c "$f" > "$raw/$name" ;; *) cp "$f" "$raw/$name" ;; esac
  done
  timeout 300 python "$torch_script" --root "$cache/torch" --epochs "$torch_epochs" --save "$cache/lab_best.pt" \
    > "$out/torch.log"
  tail -n 1 "$out/torch.log" > "$out/torch.json"
else
  echo "== the lab's PyTorch script: skipped (no torch + torchvision, or no $torch_script)"
  rm -f "$out/torch.json"
fi

python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json") if p.stem != "summary"}
lab = next((r for r in runs.values() if "failed" not in r), {"device": "unknown", "jax": "unknown"})
summary = {"device": lab["device"], "jax": lab["jax"], "pytest": (out / "pytest.txt").read_text().strip(), "runs": runs}
lines = [f"device: {lab['device']}, jax {lab['jax']}", f"pytest -m gpu: {summary['pytest'].splitlines()[-1]}"]
for name in ("lab", "lab-warm-cache", "lab-tf32", "lab-nondeterministic", "improved", "resnet"):
    r = runs[name]
    if "failed" in r:  # "lab" failing while "lab-nondeterministic" runs: the deterministic step does not compile
        lines.append(f"{name:22s} FAILED: {r['failed']}")
        continue
    lines.append(f"{name:22s} train after compile {r['train_seconds_after_compile']:7.2f} s, {r['images_per_second']:>10,.0f} images/s, "
                 f"{r['achieved_gflops_per_second']:,.1f} GFLOP/s ({r['train_mflops_per_image']:.1f} MFLOP an image), "
                 f"compile ~{r['compile_seconds_estimate']:.1f} s, eval {1000 * r['eval_seconds_median']:.1f} ms, "
                 f"final accuracy {r['test_accuracy_per_epoch'][-1]:.2f}%")
seeds = runs["seeds"]
lines.append(f"seeds together          FAILED: {seeds['failed']}" if "failed" in seeds else
             f"{seeds['seeds']} seeds together (vmap): {seeds['together_over_alone_per_model']}x one seed's images/s per model, "
             f"weights within {seeds['max_weight_difference_seed_0']:.1e} of the seed alone")
torch = runs.get("torch")
if torch and "failed" not in runs["lab"]:
    torch_train = sum(e["train_s"] for e in torch["epochs"]) / len(torch["epochs"])
    summary["torch_images_per_second"] = round(60000 / torch_train, 1)
    summary["throughput_ratio"] = round(runs["lab"]["images_per_second"] / summary["torch_images_per_second"], 1)
    lines.append(f"PyTorch script ({torch['device']}): {summary['torch_images_per_second']:,.0f} images/s; "
                 f"jaxmnist/PyTorch throughput {summary['throughput_ratio']}x (target: at least 30x)")
lines.append("targets: lab training after compile < 1 s, compile < 20 s, eval < 20 ms, improved < 5 s")
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print("\n".join(lines))
PY
