"""The gradient-flow tool (spikeforge.sw.gradflow): gradient norms per layer and width, and the width choice."""

import math

import pytest
import torch

from spikeforge.sw.gradflow import PeakNormalized, auto_width, main, measure
from spikeforge.sw.neuron import make_surrogate
from spikeforge.sw.resnet import resnet8

WIDTHS = [0.1, 0.3, 1.0, 3.0, 10.0]
SETUP = dict(time_steps=3, batch=2, input_shape=(1, 8, 8))


def tiny():
    return resnet8(width=0.25, num_classes=4)


@pytest.fixture(scope="module")
def tables():
    return {norm: measure(tiny, WIDTHS, normalize=norm, **SETUP) for norm in ("area", "peak")}


def test_one_row_per_layer_and_width(tables):
    table = tables["area"]
    layers = [n for n, m in tiny().named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(table.rows) == len(layers) * len(WIDTHS)
    for w in WIDTHS:
        rows = [r for r in table.rows if r.width == w]
        assert sorted(r.layer for r in rows) == sorted(layers)
        assert [r.depth for r in rows] == list(range(len(layers)))
        assert rows[0].layer == "stem.conv" and rows[-1].layer == "fc"
    neurons = [r for r in table.neuron_rows if r.width == WIDTHS[0]]
    assert len(neurons) == 7 and all(len(r.input_grad) == SETUP["time_steps"] for r in neurons)
    assert all(math.isfinite(v) and v > 0 for v in table.ratios().values())
    assert "ratio first/last" in table.format() and table.markdown().count("\n") == len(WIDTHS) + 1


def test_wider_surrogate_changes_gradients_monotonically(tables):
    # The forward pass (Heaviside) is the same for every width: the readout's gradient does not change ...
    for table in tables.values():
        assert len({round(table.layer_norms(w)[-1], 9) for w in WIDTHS}) == 1
    # ... while the first layer's does, monotonically: with a unit peak a wider surrogate passes more gradient
    # (explodes), with unit area (sw/neuron.py) its peak 1/width shrinks and the gradient vanishes.
    peak = [tables["peak"].ratios()[w] for w in WIDTHS]
    area = [tables["area"].ratios()[w] for w in WIDTHS]
    assert all(a < b for a, b in zip(peak, peak[1:])), peak
    assert all(a > b for a, b in zip(area, area[1:])), area


def test_auto_width_picks_the_ratio_closest_to_one(tables):
    table = tables["area"]
    best = min(WIDTHS, key=lambda w: abs(math.log(table.ratios()[w])))
    assert table.best_width() == best
    chosen = auto_width(tiny, WIDTHS, **SETUP)
    assert chosen in WIDTHS and chosen == best


def test_peak_normalized_surrogate_peaks_at_one():
    for kind in ("arctan", "sigmoid", "triangular", "fast_sigmoid"):
        s = PeakNormalized(make_surrogate(kind, 0.3))
        assert float(s.derivative(torch.zeros(()))) == pytest.approx(1.0)


def test_main_prints_table_and_writes_png(tmp_path, capsys):
    png = tmp_path / "gradflow.png"
    table = main(["--model", "resnet8", "--model-width", "0.25", "--input", "1,8,8", "--time-steps", "2",
                  "--batch", "2", "--widths", "0.3,3", "--png", str(png)])
    assert png.stat().st_size > 1000 and table.widths == [0.3, 3.0]
    assert "best width" in capsys.readouterr().out


def test_device_argument_gives_the_same_table(tables):
    """device="cpu" (explicit) measures exactly what the default does: the batch is drawn on the CPU first."""
    again = measure(tiny, WIDTHS, normalize="area", device="cpu", **SETUP)
    assert again.ratios() == tables["area"].ratios()


def test_cuda_without_a_gpu_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda was asked for but torch sees no CUDA device"):
        main(["--model", "resnet8", "--device", "cuda"])
