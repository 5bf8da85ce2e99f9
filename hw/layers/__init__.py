"""The building blocks of the accelerator: the input unit, the layer unit (with one fan-out walker per
projection; ``HalfRateLayerUnit`` runs it at half rate with its membrane in single-port SPRAM) and the event
fan-out, joined by event streams.

Every unit speaks the same protocol (:mod:`.events`): a stream of events, each naming one neuron of its population
(channel, row, column, flat index) with a value (the pixel for the input, 1 for a spike), and an end-of-step token
after the last event of each time step. hw/accelerator.py wires the units into the network's graph; this package
knows nothing of the graph.
"""

from .events import (DEFAULT_MAX_LANES, channel_words, event_layout, grid, index_bits, is_diagonal, lane_limit,
                     projection_groups, weight_words)
from .fanout import EventFanout, FanoutWalker
from .input_unit import InputUnit
from .layer_unit import LayerUnit
from .half_rate import HalfRateLayerUnit

__all__ = ["event_layout", "index_bits", "projection_groups", "is_diagonal", "weight_words", "grid", "channel_words",
           "lane_limit", "DEFAULT_MAX_LANES", "InputUnit",
           "EventFanout", "FanoutWalker", "LayerUnit", "HalfRateLayerUnit"]
