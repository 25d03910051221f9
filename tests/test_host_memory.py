"""vit_jax.framework.host_memory: on the CPU a step's scratch memory is the last step's pages, not new ones.

The kernel's own count of the process's minor page faults is the reference: each fresh page
touched is one fault.
"""

import os
import subprocess
import sys

import pytest

from vit_jax.framework import host_memory

# glibc alone: a worker thread mallocs, touches and frees 128 MB, then a second thread does the
# same; prints the page faults of the second thread's round.
_THREADS = r'''
import ctypes, resource, sys, threading
from vit_jax.framework import host_memory
if sys.argv[1] == 'reuse':
  assert host_memory.reuse_freed_memory_on_cpu()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def round_trip():
  p = libc.malloc(128 << 20)
  libc.memset(p, 1, 128 << 20)
  libc.free(p)
for i in range(2):
  before = faults()
  thread = threading.Thread(target=round_trip)
  thread.start()
  thread.join()
print(faults() - before)
'''

# XLA: a jitted step with a 128 MB scratch (two 64 MB intermediates), 20 runs after a warm-up;
# prints the scratch in pages and the page faults of all 20 runs.
_STEPS = r'''
import resource, sys
from vit_jax.framework import host_memory
if sys.argv[1] == 'reuse':
  assert host_memory.reuse_freed_memory_on_cpu()
import jax, jax.numpy as jnp
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = jnp.ones((4096, 4096))
step = jax.jit(lambda x: (jnp.sin(x) * x[::-1]).sum(0))
scratch = step.lower(x).compile().memory_analysis().temp_size_in_bytes
step(x).block_until_ready()
before = faults()
for _ in range(20):
  step(x).block_until_ready()
print(scratch // resource.getpagesize(), faults() - before)
'''

_PAGES_128MB = (128 << 20) // 4096
linux_only = pytest.mark.skipif(sys.platform != 'linux', reason='glibc malloc')


def _run(script: str, mode: str) -> list[int]:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', script, mode], env=env, capture_output=True,
                       text=True, timeout=120, check=True).stdout
  return [int(v) for v in out.split()]


@linux_only
def test_a_threads_freed_memory_is_the_next_threads():
  """glibc's default serves a thread's 128 MB by a fresh mmap (every page faults in again);
  with the setting it comes from the one heap, pages already touched."""
  [default] = _run(_THREADS, 'default')
  [reused] = _run(_THREADS, 'reuse')
  assert default >= _PAGES_128MB * 9 // 10
  assert reused < _PAGES_128MB // 100


@pytest.mark.slow
@linux_only
def test_xla_steps_mostly_reuse_their_scratch():
  """Without the setting each of 20 steps faults in its whole scratch again; with it the heap
  grows by a scratch only where a step allocates before the last one's scratch is freed (just
  after its outputs are ready), then those pages are reused: at most half of the default."""
  pages, default = _run(_STEPS, 'default')
  assert pages >= _PAGES_128MB  # Over glibc's 64 MB per-thread-arena limit.
  assert default >= 20 * pages * 9 // 10
  _, reused = _run(_STEPS, 'reuse')
  assert reused <= default // 2, (reused, default)


@pytest.mark.parametrize('platforms', ['cuda', 'tpu', 'cuda,cpu'])
def test_accelerator_runs_keep_the_default(monkeypatch, platforms):
  monkeypatch.setenv('JAX_PLATFORMS', platforms)
  assert host_memory.reuse_freed_memory_on_cpu() is False
