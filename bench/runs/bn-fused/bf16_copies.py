"""Step time of spikeforge-bf16 (argv[1] = width divisor) and where its aten::copy_ time goes (tensor shapes and
the ops that called it), from torch.profiler. PYTHONPATH=. .venv/bin/python bench/runs/bn-fused/bf16_copies.py 4"""
import sys, argparse, torch
from torch.profiler import profile, ProfilerActivity
from bench import bench_train as bt
torch.set_num_threads(2)
name = sys.argv[2] if len(sys.argv) > 2 else "spikeforge-bf16"
args = argparse.Namespace(width_div=int(sys.argv[1]), time_steps=10, device="cpu", batch=32)
model, forward, _ = bt._spikeforge_model(dict(bt.SPIKEFORGE[name]), args)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(32, 3, 32, 32); y = torch.randint(0, 10, (32,))
def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(forward(x), y); loss.backward(); opt.step()
import time
for _ in range(3): step()
t0 = time.perf_counter(); step(); print("step", time.perf_counter() - t0)
with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True) as p:
    step()
ev = [e for e in p.events() if e.name == "aten::copy_"]
import collections
agg = collections.defaultdict(lambda: [0.0, 0])
for e in ev:
    par = e.cpu_parent
    chain = []
    while par is not None and len(chain) < 3:
        chain.append(par.name); par = par.cpu_parent
    key = (str(e.input_shapes[:2]), " < ".join(chain))
    agg[key][0] += e.self_cpu_time_total; agg[key][1] += 1
for k, v in sorted(agg.items(), key=lambda kv: -kv[1][0])[:14]:
    print(f"{v[0]/1e3:6.1f} ms {v[1]:3d}  {k[0][:60]:60s} {k[1][:110]}")
