"""Runs the training code's unit tests (unittest). Exits 77 (ctest: skipped) with a message when
PyTorch or safetensors is not installed, as in CI; the GPU machine has both (training/run.sh)."""

import os
import sys
import unittest

try:
    import torch  # noqa: F401
    import safetensors  # noqa: F401
except ImportError as e:
    print(f"SKIP: {e.name} is not installed; the training tests run where PyTorch is "
          "(training/run.sh on the GPU machine)")
    sys.exit(77)

here = os.path.dirname(os.path.abspath(__file__))
suite = unittest.defaultTestLoader.discover(here, pattern="test_*.py", top_level_dir=here)
result = unittest.TextTestRunner(verbosity=2).run(suite)
sys.exit(0 if result.wasSuccessful() else 1)
