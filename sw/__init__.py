"""spikeforge.sw: training, folding and export of spiking networks (PyTorch)."""

import os

# PyTorch's CPU allocator puts tensors of 2 MiB and more on transparent huge pages when THP_MEM_ALLOC_ENABLE=1. It
# reads the variable once, at its first such allocation, so it is set here, when spikeforge's training code is
# imported (no effect if the process allocated a large tensor before). Training allocates many large short-lived
# tensors (a full-width ResNet-18 layer's [T*B, C, H, W] is 80 MiB); glibc maps each one afresh and the kernel
# faults it in 4 KiB at a time: a fresh 80 MiB tensor cost 19 ms more to fill than a reused one, 5 ms with huge
# pages (2026-12-04, Zen 4 EPYC VM, THP in "madvise" mode). To opt out, set THP_MEM_ALLOC_ENABLE=0 before the import.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
