"""The library route to event-driven convs (2026-12-04): torch.sparse CSR (MKL) times dense, i.e. the scatter form
S[N*H*W, Cin] @ W[Cin, 9*Cout] of a 3x3 conv on spikes (the 9-way shifted sum it still needs is not even counted),
against oneDNN's dense channels_last conv. Run: .venv/bin/python bench/runs/event-conv/sparse_csr.py"""
import torch, time
import torch.nn.functional as F
torch.set_num_threads(2)
torch.manual_seed(0)
def bench(f, n=3):
    f(); ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return min(ts)
for C,H in [(64,32),(128,16),(256,8)]:
    N=320
    for d in (0.2,0.05):
        s=(torch.rand(N,C,H,H)<d).float().contiguous(memory_format=torch.channels_last)
        w=torch.randn(C,C,3,3).contiguous(memory_format=torch.channels_last)
        dense=bench(lambda: F.conv2d(s,w,padding=1))
        # scatter formulation: S[NHW, Cin] (CSR) @ Wall[Cin, 9*Cout], then shifted sum of the 9 slices
        S=s.permute(0,2,3,1).reshape(-1,C)
        Wall=w.permute(1,2,3,0).reshape(C,9*C).contiguous()
        def sp():
            Sc=S.to_sparse_csr()
            P=Sc@Wall
            return P
        spt=bench(sp)
        Sc=S.to_sparse_csr()
        mm=bench(lambda: Sc@Wall)
        print(f"C={C} H={H} density {d}: dense oneDNN NHWC fwd {dense*1e3:.0f} ms; sparse CSR build+matmul {spt*1e3:.0f} ms (matmul alone {mm*1e3:.0f} ms, before the 9-way shifted sum)", flush=True)
