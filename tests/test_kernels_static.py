"""kernels.static: the sm_90 static report's arithmetic, and its verdicts on the models' channels_last shapes."""

import pytest
import torch

from fastcifar.kernels import static


def test_occupancy_is_limited_by_the_scarcest_resource():
    # 72 registers x 32 threads = 2304 per warp -> 28 warps of 65536 registers -> 7 blocks of 4 warps.
    assert static.occupancy(72, 3072, 4) == {"blocks_per_sm": 7, "limited_by": "registers", "warps_per_sm": 28,
                                             "occupancy": 0.438}  # fmt: skip
    # 100 KB of shared memory (+ 1 KB reserved) per block: 2 blocks in 228 KB.
    assert static.occupancy(32, 100 * 1024, 4)["blocks_per_sm"] == 2
    assert static.occupancy(32, 100 * 1024, 4)["limited_by"] == "shared"
    # 1-warp blocks with few registers stop at the 32-block cap.
    assert static.occupancy(16, 0, 1) == {"blocks_per_sm": 32, "limited_by": "blocks", "warps_per_sm": 32,
                                          "occupancy": 0.5}  # fmt: skip
    # Register allocation rounds up to 256 per warp: 33 registers cost as much as 40.
    assert static.occupancy(33, 0, 8)["blocks_per_sm"] == static.occupancy(40, 0, 8)["blocks_per_sm"] == 6


def test_global_access_widths_read_vector_and_scalar_ptx():
    ptx = """
        @%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
        ld.global.b16 %rs1, [ %rd2 + 0 ];
        @%p2 ld.global.L1::evict_last.v2.b32 { %r5, %r6 }, [ %rd3 + 0 ];
        @%p3 st.global.v4.b32 [ %rd4 + 0 ], { %r1, %r2, %r3, %r4 };
        st.global.b8 [ %rd5 + 0 ], %rs2;
        ld.shared.v4.b32 { %r7, %r8, %r9, %r10 }, [ %r11 + 0 ];
    """
    assert static.global_access_widths(ptx) == {"ld": {128: 1, 16: 1, 64: 1}, "st": {128: 1, 8: 1}}


def analyse_model_shapes() -> list[dict]:
    """Compile a few of the models' channels_last bf16 launches (C % 8 == 0) for sm_90 and report them.

    Must run with TRITON_INTERPRET unset. sk_densenet's stem (C = 40, not a multiple of 16, so Triton's
    own specialisation proves no alignment) and a 4x4 stage; densenet_triplet's Z-pools along C and H.
    """
    cl = torch.channels_last
    launches = {
        **{f"{k} C40": v for k, v in static.sk_launches((256, 2, 40, 32, 32), torch.bfloat16, cl).items()},
        **{f"{k} C80 4x4": v for k, v in static.sk_launches((256, 2, 80, 4, 4), torch.bfloat16, cl).items()},
        **static.zpool_launches((256, 80, 16, 16), 1, torch.bfloat16, cl),
        **static.zpool_launches((256, 80, 16, 16), 2, torch.bfloat16, cl),
    }
    return [{"name": name, **static.analyse(launch)} for name, launch in launches.items()]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the static report is for machines without a GPU")
def test_model_shapes_compile_without_spills_and_with_128_bit_accesses(call_compiling_triton):
    rows = call_compiling_triton(__file__, "analyse_model_shapes")
    assert len(rows) == 10
    for r in rows:
        assert r["spill_bytes"] == 0, r
        assert r["grid"] >= 132, f"{r['name']}: a grid of {r['grid']} leaves SMs idle"
        # The big tensor traffic: what each kernel reads (forward, reductions) or writes (Z-pool backward).
        big_side = "vector_stores" if r["name"].startswith("zpool") and r["name"].endswith("bwd") else "vector_loads"
        assert r[big_side], f"{r['name']}: no 128-bit global accesses ({r['loads_bits']}, {r['stores_bits']})"
        if r["name"].startswith("sk_select"):  # reads and writes full (N, C, H, W) tensors
            assert r["vector_loads"] and r["vector_stores"], r
