"""Filling a fresh 80 MiB tensor vs a reused one (page faults). Run as
THP_MEM_ALLOC_ENABLE=0 or =1 .venv/bin/python bench/runs/bn-fused/page_faults.py (the variable is read by PyTorch's
allocator at its first large allocation)."""
import torch, time
torch.set_num_threads(2)
def tm(f, reps=7):
    f(); ts=[]
    for _ in range(reps):
        t0=time.perf_counter(); f(); ts.append(time.perf_counter()-t0)
    return sorted(ts)[reps//2]*1e3
x = torch.randn(10, 32768, 64)
print("empty+fill 80MB", tm(lambda: torch.empty(10, 32768, 64).fill_(1.0)), "ms; add", tm(lambda: x + x), "ms")
y = torch.empty_like(x)
print("prealloc fill", tm(lambda: y.fill_(1.0)), "add out", tm(lambda: torch.add(x, x, out=y)))
