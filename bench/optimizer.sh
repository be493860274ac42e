#!/usr/bin/env bash
# One optimizer update (global-norm clipping + AdamW with weight decay) over N
# fp32 parameters: vlft vs torch.optim.AdamW + clip_grad_norm_, same machine,
# same run. Usage: bench/optimizer.sh [N (default 50M)] [repeats]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50000000}
repeats=${2:-5}
make -s build/libvlft.a
bin=$(mktemp)
cc -O2 -fopenmp -std=c11 -D_GNU_SOURCE bench/optimizer_step.c build/libvlft.a -o "$bin" \
    $(make -s --no-print-directory lib-ldlibs)
vlft_s=$("$bin" "$n" "$repeats")
rm -f "$bin"
torch_s=$(/usr/bin/python3 - "$n" "$repeats" <<'PY'
import sys, time, torch
n, repeats = int(sys.argv[1]), int(sys.argv[2])
chunk = 4 << 20
sizes = [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])
params = [torch.zeros(s, requires_grad=True) for s in sizes]
for p in params:
    p.grad = torch.full_like(p, 0.001)
opt = torch.optim.AdamW([{"params": params[0::2], "weight_decay": 0.0}, {"params": params[1::2], "weight_decay": 0.01}],
                        lr=1e-4)
torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
start = time.perf_counter()
for _ in range(repeats):
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
print(f"{(time.perf_counter() - start) / repeats:.6f}")
PY
)
echo "optimizer update over $n params: vlft ${vlft_s}s, torch ${torch_s}s, torch/vlft = $(python3 -c "print(f'{$torch_s / $vlft_s:.2f}')")"
