"""pytest set-up shared by every test."""

import os
import shutil
import tempfile

from helpers import FAST_COMPILE

# Compiling, not running, is most of this suite's time: tiny models, a few steps each. Set before
# jax starts, so that the in-process compiles, child processes and notebook kernels all get it.
os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

# torch before TensorFlow: torch.optim imports triton lazily, and triton's native library
# segfaults when TensorFlow's was loaded first in the same process.
import torch  # noqa: F401
import torch._dynamo  # noqa: F401
import jax
import pytest

_compilation_cache = None


def pytest_configure(config):
  """One persistent compilation cache for this session's in-process compiles: tests that build
  the same small model and step compile it once. A fresh folder, so no test sees another
  session's entries; set before any test module imports (JAX reads the setting once)."""
  config.addinivalue_line(
      'markers', 'slow: more than ~10 s on 2 CPU cores; `-m "not slow"` is the fast subset that '
      'people run while they work (CI runs everything)')
  global _compilation_cache
  _compilation_cache = tempfile.mkdtemp(prefix='xla_cache_')
  jax.config.update('jax_compilation_cache_dir', _compilation_cache)


def pytest_unconfigure(config):
  shutil.rmtree(_compilation_cache, ignore_errors=True)


@pytest.fixture
def workdir(tmp_path):
  return str(tmp_path / 'workdir')
