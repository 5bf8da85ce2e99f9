"""width / 4's narrow convs (16-64 channels, N = 320, 25% spikes): event-driven forward + weight gradient against oneDNN's,
to choose event_conv.MIN_CHANNELS. Run from the repository root: .venv/bin/python bench/runs/event-conv2/small_convs.py"""
import time, torch, torch.nn.functional as F
from spikeforge.sw.event_conv import _extension, _packed, _unpacked
torch.set_num_threads(2); ext = _extension()
def med(f, n=7):
    f(); ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return sorted(ts)[n // 2]
torch.manual_seed(0)
for cin, cout, h, stride in [(16, 32, 32, 2), (32, 32, 16, 1), (16, 16, 32, 1), (32, 64, 16, 2), (64, 64, 8, 1)]:
    s = (torch.rand(320, cin, h, h) < 0.25).float().contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, 3, 3).contiguous(memory_format=torch.channels_last); nhwc = s.permute(0, 2, 3, 1)
    y = F.conv2d(s, w, stride=stride, padding=1); g = torch.randn_like(y); gn = g.permute(0, 2, 3, 1)
    dense = med(lambda: F.conv2d(s, w, stride=stride, padding=1)) + med(lambda: torch.ops.aten.convolution_backward(g, s, w, None, [stride]*2, [1]*2, [1]*2, False, [0, 0], 1, [False, True, False]))
    def ev():
        o, c = ext.events(nhwc)
        ext.forward(o, c, list(nhwc.shape), _packed(w), cout, stride, 1)
        _unpacked(ext.weight_grad(o, c, list(nhwc.shape), gn, 3, stride, 1), w.shape).contiguous()
    e = med(ev)
    print(f"{cin}->{cout} {h} s{stride}: oneDNN fwd+wgrad {dense*1e3:.0f} ms, events {e*1e3:.0f} ms ({dense/e:.2f}x)")
