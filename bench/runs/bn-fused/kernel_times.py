"""Wall time of every compiled fused-node kernel in one spikeforge step of the training benchmark (argv[1] = width
divisor), after two untimed steps. Run from the repository root: PYTHONPATH=. .venv/bin/python bench/runs/bn-fused/kernel_times.py 1
(with THP_MEM_ALLOC_ENABLE=0 in the environment for the run without huge pages)."""
import sys, time, argparse, collections, torch
from bench import bench_train as bt
from spikeforge.sw import fused
torch.set_num_threads(2)
args = argparse.Namespace(width_div=int(sys.argv[1]) if len(sys.argv) > 1 else 1, time_steps=10, device="cpu", batch=32)
model, forward, _ = bt._spikeforge_model(dict(bt.SPIKEFORGE["spikeforge"]), args)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(32, 3, 32, 32); y = torch.randint(0, 10, (32,))
def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(forward(x), y); loss.backward(); opt.step()
step(); step()
rec = []
for name in list(fused._COMPILED):
    f = fused._COMPILED[name]
    def wrap(*a, _f=f, _n=name):
        t0 = time.perf_counter(); r = _f(*a); dt = time.perf_counter() - t0
        sh = [tuple(t.shape) + ((str(t.dtype)[6:],) if t.dtype != torch.float32 else ()) for t in a if isinstance(t, torch.Tensor) and t.ndim >= 2]
        rec.append((_n, dt, sh)); return r
    fused._COMPILED[name] = wrap
t0 = time.perf_counter(); step(); tot = time.perf_counter() - t0
s = 0
for n, dt, sh in rec:
    s += dt; print(f"{n:12s} {dt*1e3:7.1f} ms  {sh}")
print(f"compiled kernels {s:.3f} s of step {tot:.3f} s")
