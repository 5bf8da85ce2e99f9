"""torch.profiler table of one `spikeforge` step of the training benchmark (full width; argv[1] = width divisor),
after two untimed steps. Run from the repository root: PYTHONPATH=. .venv/bin/python bench/runs/event-conv2/profile_step.py"""
import sys, argparse, torch
from torch.profiler import profile, ProfilerActivity
from bench import bench_train as bt
torch.set_num_threads(2)
args = argparse.Namespace(width_div=int(sys.argv[1]) if len(sys.argv) > 1 else 1, time_steps=10, device="cpu", batch=32)
model, forward, _ = bt._spikeforge_model(dict(bt.SPIKEFORGE["spikeforge"]), args)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(32, 3, 32, 32); y = torch.randint(0, 10, (32,))
def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(forward(x), y); loss.backward(); opt.step()
step(); step()
with profile(activities=[ProfilerActivity.CPU]) as p:
    step()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=35))
