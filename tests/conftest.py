"""pytest set-up shared by every test."""

# torch before TensorFlow: torch.optim imports triton lazily, and triton's native library
# segfaults when TensorFlow's was loaded first in the same process.
import torch  # noqa: F401
import torch._dynamo  # noqa: F401
import pytest


@pytest.fixture
def workdir(tmp_path):
  return str(tmp_path / 'workdir')
