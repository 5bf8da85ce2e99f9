"""The network image: the one file that couples training (spikeforge.sw) and hardware (spikeforge.hw).

A network image is a ZIP archive holding ``manifest.json`` (layer descriptors and widths) and one NumPy ``.npy``
array per parameter tensor. docs/network-file.md documents every field, rule and limit so that a third party can
write one without this code. :mod:`.model` holds the types, the limits and the rules (``validate``); :mod:`.reader`
reads a file nobody vouches for (``load``: every declared size is checked before anything is allocated or
decompressed); :mod:`.writer` writes one (``save``). Torch-free on purpose: the gateware generator imports it.
"""

from .model import (FORMAT_NAME, FORMAT_VERSION, KINDS, MAX_ACC_BITS, MAX_ARRAY_ELEMENTS, MAX_JSON_DEPTH,
                    MAX_MANIFEST_BYTES, MAX_NAME_CHARS, MAX_NETWORK_NEURONS, MAX_PADDING, MAX_POPULATION_NEURONS,
                    MAX_POPULATIONS, MAX_PROJECTIONS, MAX_STRIDE, MAX_TIME_STEPS, MAX_TOTAL_ELEMENTS,
                    PROJECTION_KINDS, Network, NetworkFileError, Population, Projection, content_hash, conv_output_size,
                    is_integer, name_problem, parameter_bits, partial_sum_bounds, projection_shape_problem,
                    required_acc_bits, signed_bits_for, signed_range, source_max, summary, validate)
from .reader import load
from .writer import save

__all__ = ["Network", "Population", "Projection", "NetworkFileError", "load", "save", "validate", "summary",
           "required_acc_bits", "partial_sum_bounds", "signed_range", "signed_bits_for", "conv_output_size",
           "source_max", "FORMAT_VERSION", "FORMAT_NAME", "KINDS", "PROJECTION_KINDS", "MAX_ACC_BITS",
           "MAX_TIME_STEPS", "MAX_MANIFEST_BYTES", "MAX_JSON_DEPTH", "MAX_NAME_CHARS", "MAX_POPULATIONS",
           "MAX_PROJECTIONS", "MAX_POPULATION_NEURONS", "MAX_NETWORK_NEURONS", "MAX_ARRAY_ELEMENTS",
           "MAX_TOTAL_ELEMENTS", "MAX_STRIDE", "MAX_PADDING", "parameter_bits", "projection_shape_problem",
           "name_problem", "is_integer", "content_hash"]
