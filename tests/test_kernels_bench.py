"""bench.kernels on CPU: the shapes read off the models, the deadline rule and the timing table."""

import bench.kernels as bk


def test_model_cases_are_the_models_own_shapes():
    # sk_densenet (growth 20): the stem SK on 2 * 20 = 40 channels at 32x32, the bottleneck SKs on
    # 4 * 20 = 80 channels in each of the four blocks (32, 16, 8, 4); two branches everywhere.
    assert bk.model_cases("sk_densenet") == [
        ("sk", 2, 80, 32, 32),
        ("sk", 2, 40, 32, 32),
        ("sk", 2, 80, 16, 16),
        ("sk", 2, 80, 8, 8),
        ("sk", 2, 80, 4, 4),
    ]
    # triplet_resnet: ImageNet stem (32 -> 8), stages of 64..512 channels; every block pools C, H and W.
    cases = bk.model_cases("triplet_resnet")
    assert {(c, h) for _, _, c, h, _ in cases} == {(64, 8), (128, 4), (256, 2), (512, 1)}
    assert {dim for _, dim, *_ in cases} == {1, 2, 3} and len(cases) == 12


def test_measurement_stops_before_a_case_that_would_overrun():
    clock = {"now": 0.0}

    def measure(case):
        clock["now"] += 10.0  # each case "takes" 10 s on the fake clock
        return [{"case": case}]

    rows, left = bk.measure_until_deadline(
        ["a", "b", "c", "d"], measure, lambda: 25.0 - clock["now"]
    )  # 25 s: after two cases 5 s remain, less than the last case took
    assert [r["case"] for r in rows] == ["a", "b"] and left == ["c", "d"]
    rows, left = bk.measure_until_deadline(["a", "b"], measure, None)
    assert len(rows) == 2 and left == []


def test_timing_table_puts_implementations_side_by_side():
    def row(impl, ms):
        return {"op": "sk_select", "shape": [256, 2, 80, 32, 32], "mode": "fwd", "impl": impl, "median_ms": ms,
                "gb_per_s": 4000.0, "fraction_of_copy": 0.8}  # fmt: skip

    record = {
        "environment": {"device_type": "cuda"}, "date": "d", "command": "c", "config": {}, "correctness": [],
        "copy_gb_per_s": 5000.0, "copy_source": "given",
        "timing": [row("triton", 0.03), row("triton_compiled", 0.031), row("eager", 0.1), row("inductor", 0.045)],
    }  # fmt: skip
    table = bk._markdown(record)
    assert "| sk_select | [256, 2, 80, 32, 32] | fwd | 30.0 | 31.0 | 100.0 | 45.0 | 4000 | 80% | 1.50x |" in table
