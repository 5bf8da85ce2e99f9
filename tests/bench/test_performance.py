"""bench/performance.py's page: the table rows and the anchors' ratios come from the measured rows."""

from __future__ import annotations

from pathlib import Path

from bench import performance


def _row(latency_us: float) -> dict:
    layer = {"name": "conv1", "lanes": 8, "spikes_per_image": 800.0, "word_updates_per_image": 3000.0,
             "lane_utilization": 1.0, "step_cycles": [500.0, 600.0]}
    perf = {"accuracy": 0.9856, "images": 10000, "cycles": {"mean": 8800.0, "min": 3400, "max": 15200},
            "latency_us": {"mean": latency_us, "max": 2 * latency_us}, "images_per_s": 1e6 / latency_us,
            "synaptic_ops_per_s": 2e8, "layers": [layer]}
    return {"label": "MNIST", "network": "tests/data/x.sfnet", "board": "icebreaker", "device": "iCE40UP5K-SG48",
            "clock_mhz": 30.0, "fmax_mhz": 32.3, "resources": {"ICESTORM_LC": (4601, 5280), "ICESTORM_RAM": (29, 30)},
            "lanes": {"conv1": 8}, "perf": perf}


def test_page_has_the_rows_and_the_anchor_ratios(tmp_path: Path):
    out = tmp_path / "performance.md"
    performance.write_markdown([_row(260.0)], "every test image", out, tmp_path / "performance.png")
    text = out.read_text()
    assert "| 98.56% on 10,000 |" in text and "4,601 / 5,280" in text and "30.00 MHz (32.3)" in text
    assert "| Spiker+ | Artix-7 | 780 us | 3.00x |" in text  # 780 / 260
    assert "| Skydiver | Zynq XC7Z045 | 44 us | 0.17x |" in text
    assert "| conv1 | 8 | 800 | 3,000 | 100.0% | 500 600 |" in text
