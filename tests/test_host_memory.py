"""vit_jax.host_memory: on the CPU a step's scratch memory is the last step's pages, not new ones.

The kernel's own count of the process's minor page faults is the reference: each fresh page a
step touches is one fault.
"""

import os
import subprocess
import sys

import pytest

from vit_jax import host_memory

# A jitted step with a 128 MB scratch buffer (two 64 MB intermediates), run 8 times after a
# warm-up; prints the scratch size in pages and the page faults of each run.
_STEPS = r'''
import resource, sys
from vit_jax import host_memory
applied = host_memory.reuse_freed_memory_on_cpu() if sys.argv[1] == 'reuse' else None
import jax, jax.numpy as jnp
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = jnp.ones((4096, 4096))
step = jax.jit(lambda x: (jnp.sin(x) * x[::-1]).sum(0))
scratch = step.lower(x).compile().memory_analysis().temp_size_in_bytes
step(x).block_until_ready()
counts = []
for _ in range(8):
  before = faults()
  step(x).block_until_ready()
  counts.append(faults() - before)
print(applied, scratch // resource.getpagesize(), *counts)
'''


def _run_steps(mode: str):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', _STEPS, mode], env=env, capture_output=True,
                       text=True, timeout=120, check=True).stdout.split()
  return out[0], int(out[1]), sorted(int(c) for c in out[2:])


@pytest.mark.skipif(sys.platform != 'linux', reason='glibc malloc')
def test_steps_reuse_the_freed_scratch_pages():
  applied, pages, counts = _run_steps('reuse')
  assert applied == 'True'
  assert pages >= 32768  # 128 MB, over glibc's 64 MB per-thread-arena limit.
  assert counts[len(counts) // 2] < pages // 100, counts  # Median: (almost) no new pages.


@pytest.mark.skipif(sys.platform != 'linux', reason='glibc malloc')
def test_without_it_every_step_faults_in_its_scratch_again():
  """The effect the setting removes: glibc's default mmaps the scratch afresh each step."""
  applied, pages, counts = _run_steps('default')
  assert counts[0] >= pages * 9 // 10, (pages, counts)


@pytest.mark.parametrize('platforms', ['cuda', 'tpu', 'cuda,cpu'])
def test_accelerator_runs_keep_the_default(monkeypatch, platforms):
  monkeypatch.setenv('JAX_PLATFORMS', platforms)
  assert host_memory.reuse_freed_memory_on_cpu() is False
