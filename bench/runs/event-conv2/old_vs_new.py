"""The event-driven kernels of 2026-12-04 evening (commit 6e15b7b, copied here as event_conv_6e15b7b.cpp) against
the current ones (sw/csrc/event_conv.cpp), alternated call by call on the ResNet-18 benchmark's conv shapes
(N = 320, 2 threads, medians of 7): event lists + forward + weight gradient, each side with its own weight layout
work. Run from the repository root: .venv/bin/python bench/runs/event-conv2/old_vs_new.py"""
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

from spikeforge.sw.event_conv import _extension, _packed, _unpacked

torch.set_num_threads(2)
new = _extension()
old = load("spikeforge_event_conv_6e15b7b", [str(Path(__file__).with_name("event_conv_6e15b7b.cpp"))],
           extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"])


def old_layer(nhwc, w, g, stride):
    offsets, channels = old.events(nhwc)
    old.forward(offsets, channels, list(nhwc.shape), w.permute(2, 3, 1, 0).contiguous(), stride, 1)
    old.weight_grad(offsets, channels, list(nhwc.shape), g, 3, stride, 1).permute(3, 2, 0, 1).contiguous()


def new_layer(nhwc, w, g, stride):
    offsets, channels = new.events(nhwc)
    new.forward(offsets, channels, list(nhwc.shape), _packed(w), w.shape[0], stride, 1)
    _unpacked(new.weight_grad(offsets, channels, list(nhwc.shape), g, 3, stride, 1), w.shape).contiguous()


torch.manual_seed(0)
print("layer | density | 6e15b7b lists + fwd + wgrad (ms) | now (ms) | speed-up")
for cin, cout, h, stride in [(64, 64, 32, 1), (64, 128, 32, 2), (128, 128, 16, 1), (256, 256, 8, 1), (512, 512, 4, 1)]:
    for density in (0.25, 0.15):
        x = (torch.rand(320, h, h, cin) < density).float()
        w = torch.randn(cout, cin, 3, 3)
        g = torch.randn(320, (h - 1) // stride + 1, (h - 1) // stride + 1, cout)
        times = {"old": [], "new": []}
        for _ in range(8):
            for name, f in (("old", old_layer), ("new", new_layer)):
                t = time.perf_counter()
                f(x, w, g, stride)
                times[name].append(time.perf_counter() - t)
        a, b = (sorted(times[k][1:])[3] for k in ("old", "new"))
        print(f"{cin}->{cout} {h}x{h} s{stride} | {density} | {a * 1e3:.0f} | {b * 1e3:.0f} | {a / b:.2f}x", flush=True)
