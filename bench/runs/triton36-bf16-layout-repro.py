"""Triton 3.6 fails to compile a kernel that Inductor (torch 2.11) generated for spikeforge's bf16 whole-model
torch.compile on an H200 (2026-12-04): the first stage's fused LIF loop of the ResNet-18 benchmark, T = 10, with the
current read in NCHW order and written in channels_last order.

No GPU needed: ``pip install triton==3.6.0`` and ``python triton36-bf16-layout-repro.py``. It compiles the kernel
for sm_90 (as Inductor does, every pointer 16-byte aligned) with several block sizes and warp counts. Here (CPU
machine, 2026-12-04) every configuration with 8 or more elements per thread failed in the TritonGPU pass pipeline
(``TritonGPURemoveLayoutConversions``: "operand #1 does not dominate this use", then ``PassManager::run failed``),
every one with fewer compiled. spikeforge now widens a bf16 current to float32 before the traced LIF loop on CUDA
(``FusedLIF._traced``), with which the whole model compiled and trained there.
"""
import itertools

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

@triton.jit
def triton_poi_fused__to_copy_add_div_ge_mul_select_sub_zeros_like_16(in_ptr0, out_ptr0, out_ptr1, out_ptr2, out_ptr3, out_ptr4, out_ptr5, out_ptr6, out_ptr7, out_ptr8, out_ptr9, out_ptr10, out_ptr11, out_ptr12, out_ptr13, out_ptr14, out_ptr15, out_ptr16, out_ptr17, out_ptr18, out_ptr19, xnumel, XBLOCK : tl.constexpr):
    xnumel = 2097152
    xoffset = tl.program_id(0) * XBLOCK
    xindex = xoffset + tl.arange(0, XBLOCK)[:]
    xmask = tl.full([XBLOCK], True, tl.int1)[:]
    x0 = (xindex % 64)
    x1 = ((xindex // 64) % 1024)
    x2 = xindex // 65536
    x3 = xindex
    tmp0 = tl.load(in_ptr0 + (2097152 + x1 + 1024*x0 + 65536*x2), None, eviction_policy='evict_last').to(tl.float32)
    tmp1 = tl.load(in_ptr0 + (4194304 + x1 + 1024*x0 + 65536*x2), None, eviction_policy='evict_last').to(tl.float32)
    tmp2 = tl.load(in_ptr0 + (6291456 + x1 + 1024*x0 + 65536*x2), None, eviction_policy='evict_last').to(tl.float32)
    tmp3 = tl.load(in_ptr0 + (8388608 + x1 + 1024*x0 + 65536*x2), None, eviction_policy='evict_last').to(tl.float32)
    tmp4 = tl.load(in_ptr0 + (10485760 + x1 + 1024*x0 + 65536*x2), None, eviction_policy='evict_last').to(tl.float32)
    tmp5 = tl.load(in_ptr0 + (12582912 + x1 + 1024*x0 + 65536*x2), None, eviction_policy='evict_last').to(tl.float32)
    tmp6 = tl.load(in_ptr0 + (14680064 + x1 + 1024*x0 + 65536*x2), None, eviction_policy='evict_last').to(tl.float32)
    tmp7 = tl.load(in_ptr0 + (16777216 + x1 + 1024*x0 + 65536*x2), None, eviction_policy='evict_last').to(tl.float32)
    tmp8 = tl.load(in_ptr0 + (18874368 + x1 + 1024*x0 + 65536*x2), None, eviction_policy='evict_last').to(tl.float32)
    tmp9 = tl.load(in_ptr0 + (x1 + 1024*x0 + 65536*x2), None, eviction_policy='evict_last').to(tl.float32)
    tmp10 = tmp9.to(tl.float32)
    tmp11 = tl.full([1], 0.0, tl.float32)
    tmp12 = tmp11 + tmp10
    tmp13 = tl.full([1], 1.0, tl.float32)
    tmp14 = tmp12 - tmp13
    tmp15 = tmp14 * tmp13
    tmp16 = tmp15 >= tmp11
    tmp17 = tmp16.to(tl.float32)
    tmp18 = tmp17 * tmp13
    tmp19 = tmp12 - tmp18
    tmp20 = tl.full([1], 0.5, tl.float32)
    tmp21 = tmp19 * tmp20
    tmp22 = tmp19 - tmp21
    tmp23 = tmp0.to(tl.float32)
    tmp24 = tmp22 + tmp23
    tmp25 = tmp24 - tmp13
    tmp26 = tmp25 * tmp13
    tmp27 = tmp26 >= tmp11
    tmp28 = tmp27.to(tl.float32)
    tmp29 = tmp28 * tmp13
    tmp30 = tmp24 - tmp29
    tmp31 = tmp30 * tmp20
    tmp32 = tmp30 - tmp31
    tmp33 = tmp1.to(tl.float32)
    tmp34 = tmp32 + tmp33
    tmp35 = tmp34 - tmp13
    tmp36 = tmp35 * tmp13
    tmp37 = tmp36 >= tmp11
    tmp38 = tmp37.to(tl.float32)
    tmp39 = tmp38 * tmp13
    tmp40 = tmp34 - tmp39
    tmp41 = tmp40 * tmp20
    tmp42 = tmp40 - tmp41
    tmp43 = tmp2.to(tl.float32)
    tmp44 = tmp42 + tmp43
    tmp45 = tmp44 - tmp13
    tmp46 = tmp45 * tmp13
    tmp47 = tmp46 >= tmp11
    tmp48 = tmp47.to(tl.float32)
    tmp49 = tmp48 * tmp13
    tmp50 = tmp44 - tmp49
    tmp51 = tmp50 * tmp20
    tmp52 = tmp50 - tmp51
    tmp53 = tmp3.to(tl.float32)
    tmp54 = tmp52 + tmp53
    tmp55 = tmp54 - tmp13
    tmp56 = tmp55 * tmp13
    tmp57 = tmp56 >= tmp11
    tmp58 = tmp57.to(tl.float32)
    tmp59 = tmp58 * tmp13
    tmp60 = tmp54 - tmp59
    tmp61 = tmp60 * tmp20
    tmp62 = tmp60 - tmp61
    tmp63 = tmp4.to(tl.float32)
    tmp64 = tmp62 + tmp63
    tmp65 = tmp64 - tmp13
    tmp66 = tmp65 * tmp13
    tmp67 = tmp66 >= tmp11
    tmp68 = tmp67.to(tl.float32)
    tmp69 = tmp68 * tmp13
    tmp70 = tmp64 - tmp69
    tmp71 = tmp70 * tmp20
    tmp72 = tmp70 - tmp71
    tmp73 = tmp5.to(tl.float32)
    tmp74 = tmp72 + tmp73
    tmp75 = tmp74 - tmp13
    tmp76 = tmp75 * tmp13
    tmp77 = tmp76 >= tmp11
    tmp78 = tmp77.to(tl.float32)
    tmp79 = tmp78 * tmp13
    tmp80 = tmp74 - tmp79
    tmp81 = tmp80 * tmp20
    tmp82 = tmp80 - tmp81
    tmp83 = tmp6.to(tl.float32)
    tmp84 = tmp82 + tmp83
    tmp85 = tmp84 - tmp13
    tmp86 = tmp85 * tmp13
    tmp87 = tmp86 >= tmp11
    tmp88 = tmp87.to(tl.float32)
    tmp89 = tmp88 * tmp13
    tmp90 = tmp84 - tmp89
    tmp91 = tmp90 * tmp20
    tmp92 = tmp90 - tmp91
    tmp93 = tmp7.to(tl.float32)
    tmp94 = tmp92 + tmp93
    tmp95 = tmp94 - tmp13
    tmp96 = tmp95 * tmp13
    tmp97 = tmp96 >= tmp11
    tmp98 = tmp97.to(tl.float32)
    tmp99 = tmp98 * tmp13
    tmp100 = tmp94 - tmp99
    tmp101 = tmp100 * tmp20
    tmp102 = tmp100 - tmp101
    tmp103 = tmp8.to(tl.float32)
    tmp104 = tmp102 + tmp103
    tmp105 = tmp104 - tmp13
    tmp106 = tmp105 * tmp13
    tmp107 = tmp106 >= tmp11
    tmp108 = tmp107.to(tl.float32)
    tl.store(out_ptr0 + (x3), tmp0, None)
    tl.store(out_ptr1 + (x3), tmp1, None)
    tl.store(out_ptr2 + (x3), tmp2, None)
    tl.store(out_ptr3 + (x3), tmp3, None)
    tl.store(out_ptr4 + (x3), tmp4, None)
    tl.store(out_ptr5 + (x3), tmp5, None)
    tl.store(out_ptr6 + (x3), tmp6, None)
    tl.store(out_ptr7 + (x3), tmp7, None)
    tl.store(out_ptr8 + (x3), tmp8, None)
    tl.store(out_ptr9 + (x3), tmp12, None)
    tl.store(out_ptr10 + (x3), tmp17, None)
    tl.store(out_ptr11 + (x3), tmp28, None)
    tl.store(out_ptr12 + (x3), tmp38, None)
    tl.store(out_ptr13 + (x3), tmp48, None)
    tl.store(out_ptr14 + (x3), tmp58, None)
    tl.store(out_ptr15 + (x3), tmp68, None)
    tl.store(out_ptr16 + (x3), tmp78, None)
    tl.store(out_ptr17 + (x3), tmp88, None)
    tl.store(out_ptr18 + (x3), tmp98, None)
    tl.store(out_ptr19 + (x3), tmp108, None)


SIGNATURE = {"in_ptr0": "*bf16", **{f"out_ptr{i}": "*bf16" for i in range(9)},
             **{f"out_ptr{i}": "*fp32" for i in range(9, 20)}, "xnumel": "i32", "XBLOCK": "constexpr"}
ALIGNED = {(i,): [["tt.divisibility", 16]] for i in range(22)}

if __name__ == "__main__":
    fn = triton_poi_fused__to_copy_add_div_ge_mul_select_sub_zeros_like_16
    for xblock, warps in itertools.product([128, 256, 512, 1024, 2048], [1, 2, 4, 8]):
        try:
            triton.compile(ASTSource(fn, SIGNATURE, constexprs={"XBLOCK": xblock}, attrs=ALIGNED),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
            result = "ok"
        except RuntimeError as exc:
            result = f"FAILED ({exc})"
        print(f"XBLOCK {xblock:4d}, {warps} warps ({xblock / (32 * warps):g} per thread): {result}", flush=True)
