"""Per-layer timing of the event-driven spike convs (sw/csrc/event_conv.cpp) against oneDNN, on the ResNet-18
benchmark's conv shapes (N = T x batch = 320, channels_last float32, 2 threads), at several spike densities; the
event side includes packing the weight and unpacking its gradient, as EventConv2dFunction does.
Run from the repository root: .venv/bin/python bench/runs/event-conv2/layers.py"""
import time

import torch
import torch.nn.functional as F

from spikeforge.sw.event_conv import _extension, _packed, _unpacked

torch.set_num_threads(2)
ext = _extension()


def median_time(f, n=5):
    f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return sorted(times)[n // 2]


def onednn(g, s, w, stride, mask):
    return torch.ops.aten.convolution_backward(g, s, w, None, [stride] * 2, [1] * 2, [1] * 2, False, [0, 0], 1, mask)


torch.manual_seed(0)
N = 320
print("layer | density | oneDNN fwd / wgrad / igrad (ms) | events: lists / fwd / wgrad (ms) | fwd+wgrad speed-up | "
      "layer (fwd+wgrad+igrad) speed-up")
for cin, cout, h, stride in [(64, 64, 32, 1), (64, 128, 32, 2), (128, 128, 16, 1), (256, 256, 8, 1), (512, 512, 4, 1)]:
    for density in (0.25, 0.2, 0.15, 0.1):
        s = (torch.rand(N, cin, h, h) < density).float().contiguous(memory_format=torch.channels_last)
        w = torch.randn(cout, cin, 3, 3).contiguous(memory_format=torch.channels_last)
        nhwc = s.permute(0, 2, 3, 1)
        offsets, channels = ext.events(nhwc)
        y = F.conv2d(s, w, stride=stride, padding=1)
        g = torch.randn_like(y)
        gn = g.permute(0, 2, 3, 1)

        def event_fwd():
            return ext.forward(offsets, channels, list(nhwc.shape), _packed(w), cout, stride, 1)

        def event_wgrad():
            return _unpacked(ext.weight_grad(offsets, channels, list(nhwc.shape), gn, 3, stride, 1),
                             w.shape).contiguous(memory_format=torch.channels_last)

        assert torch.allclose(event_fwd().permute(0, 3, 1, 2), y, atol=1e-3)
        assert torch.allclose(event_wgrad(), onednn(g, s, w, stride, [False, True, False])[1], atol=1e-2, rtol=1e-4)
        t_fwd = median_time(lambda: F.conv2d(s, w, stride=stride, padding=1))
        t_wgrad = median_time(lambda: onednn(g, s, w, stride, [False, True, False]))
        t_igrad = median_time(lambda: onednn(g, s, w, stride, [True, False, False]))
        t_lists = median_time(lambda: ext.events(nhwc))
        t_efwd = median_time(event_fwd)
        t_ewgrad = median_time(event_wgrad)
        events = t_lists + t_efwd + t_ewgrad
        print(f"{cin}->{cout} {h}x{h} s{stride} | {density} | {t_fwd * 1e3:.0f} / {t_wgrad * 1e3:.0f} / "
              f"{t_igrad * 1e3:.0f} | {t_lists * 1e3:.0f} / {t_efwd * 1e3:.0f} / {t_ewgrad * 1e3:.0f} | "
              f"{(t_fwd + t_wgrad) / events:.2f}x | {(t_fwd + t_wgrad + t_igrad) / (events + t_igrad):.2f}x", flush=True)
