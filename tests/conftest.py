import sys
from pathlib import Path

# The repository root, so that tests can import shared helpers from tests/ itself.
sys.path.insert(0, str(Path(__file__).resolve().parent))
