import sys
from pathlib import Path

# tests/ itself, so that tests can import shared helpers from it (fake_datasets, hw_helpers), and the repository root,
# so that they can import bench/ (the benchmarks, not installed) however pytest is started.
_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))
if str(_TESTS.parent) not in sys.path:
    sys.path.insert(1, str(_TESTS.parent))

# The test session allocates like `spikeforge train` does: PyTorch's tensors of 2 MiB and more on transparent huge
# pages (spikeforge.allocator; PyTorch reads the switch at its first tensor, before any test module is imported).
from spikeforge.allocator import use_huge_pages  # noqa: E402

use_huge_pages("auto")
