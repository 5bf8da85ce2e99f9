"""Spike density (fraction of ones) at the input of every hidden conv: the ResNet-18 of bench/bench_train.py at
initialization on random images (what the benchmark trains), and the trained Fashion-MNIST chain
bench/runs/fm-chain-c24-e24.sfnet run by the integer reference on 500 test images.
Run from the repository root: .venv/bin/python bench/runs/event-conv/density.py"""
import torch

from spikeforge.netimage import load
from spikeforge.sw import reference
from spikeforge.sw.data import load_dataset
from spikeforge.sw.resnet import BasicBlock, SpikingResNet, lif_neuron

torch.manual_seed(0)
model = SpikingResNet(BasicBlock, [2, 2, 2, 2], widths=[64, 128, 256, 512], num_classes=10, time_steps=10,
                      neuron=lif_neuron("arctan", 0.5, leak_shift=1)).train()
seen = []


def hook(module, inputs, _output):
    x = inputs[0]
    if ((x == 0) | (x == 1)).all():  # a spike input (the stem's conv sees pixels)
        seen.append((tuple(module.weight.shape), x.float().mean().item()))


for m in model.modules():
    if isinstance(m, torch.nn.Conv2d):
        m.register_forward_hook(hook)
with torch.no_grad():
    model(torch.rand(32, 3, 32, 32))
print("ResNet-18 benchmark network at init, random images: density at each hidden conv's input")
for shape, d in seen:
    print(f"  conv {list(shape)}: {d:.3f}")
net = load("bench/runs/fm-chain-c24-e24.sfnet")
x, _ = load_dataset("fashion-mnist", "test")
result = reference.run(net, x[:500])
print("trained chain bench/runs/fm-chain-c24-e24.sfnet, 500 Fashion-MNIST test images: spike density per population")
for pop, s in zip(net.populations, result.spikes):
    if s is not None:
        print(f"  {pop.name} {list(s.shape[2:])}: {s.float().mean().item():.3f}")
