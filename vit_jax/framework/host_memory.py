"""Host memory on the CPU backend: a step reuses the memory earlier steps freed.

XLA's CPU client mallocs a step's buffers from its worker threads (a ViT-B/16 train step at batch
8 needs 1.1 GB of scratch). glibc serves a thread's request over 64 MB by a fresh mmap and
unmaps it on free, so every step faulted in, and the kernel zeroed, about 280k new pages
(the README's benchmark section has what that cost). `reuse_freed_memory_on_cpu` has glibc serve
every thread from the one main heap, never by mmap, and never give freed memory back (mallopt
M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1): a step's buffers are pages an earlier step
used (the heap grows by a scratch only where a step allocates before the last one's scratch is
freed, just after its outputs are ready). The process then holds its peak host memory until it
exits, as a device allocator does.

It has to run before JAX starts its CPU client (a thread keeps the arena it first allocated
from), and only when JAX will run on the CPU: accelerator runs keep glibc's defaults.
"""

import ctypes
import importlib.metadata
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
_ACCELERATOR_PLUGINS = ('jax-cuda', 'jax_cuda', 'jax-rocm', 'jax_rocm', 'libtpu')


def _runs_on_cpu_only() -> bool:
  """Whether JAX will run on the CPU alone, decided without starting a backend: JAX_PLATFORMS
  says cpu, or no accelerator plugin (CUDA, ROCm, TPU) is installed."""
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return platforms.split(',') == ['cpu']
  return not any((dist.metadata['Name'] or '').lower().startswith(_ACCELERATOR_PLUGINS)
                 for dist in importlib.metadata.distributions())


def reuse_freed_memory_on_cpu() -> bool:
  """Sets glibc's malloc as above when JAX will run on the CPU alone; False (nothing changed)
  where it will not, where the C library is not glibc, or where glibc refuses a setting."""
  if (platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc'
      or not _runs_on_cpu_only()):
    return False
  mallopt = ctypes.CDLL(None).mallopt
  return all(mallopt(option, value) == 1 for option, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))  # -1: never trim
