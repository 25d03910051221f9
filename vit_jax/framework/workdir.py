"""The run's working directory: writable, and used by one run at a time.

Two runs writing one workdir would save over each other's checkpoints and metrics. The first
run holds an exclusive `flock` on WORKDIR/run.lock; the kernel drops it when that process ends
in any way (even `kill -9`), so a lock file left behind by a dead run is simply taken over.
"""

import fcntl
import os
import socket
from typing import IO, Optional

import jax
from absl import logging

from vit_jax.framework.errors import UserError

LOCK_FILE = 'run.lock'


def prepare(workdir: str) -> None:
  """Creates `workdir` and checks that this process can write to it."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test_{jax.process_index()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise UserError(f'workdir {workdir!r} is not writable ({e.strerror}): pass a --workdir you '
                    'can write to') from None


class RunLock:
  """Held by process 0 for the length of a run (`with RunLock(workdir): ...`)."""

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, LOCK_FILE)
    self._file: Optional[IO[str]] = None

  def __enter__(self) -> 'RunLock':
    if jax.process_index() > 0:  # Process 0 speaks for the whole job.
      return self
    self._file = open(self._path, 'a+')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or 'another process'
      self._file.close()
      raise UserError(f'workdir {os.path.dirname(self._path)} is in use by a running job '
                      f'({holder}): wait for it to end, stop it, or pass another --workdir'
                      ) from None
    except OSError as e:  # Some network file systems cannot lock: run, but say what is lost.
      logging.warning('Cannot lock %s (%s): a second run started in this workdir would not be '
                      'stopped.', self._path, e.strerror)
      self._file.close()
      self._file = None
      return self
    self._file.seek(0)
    previous = self._file.read().strip()
    if previous:
      logging.warning('Took over the lock of a run that ended without releasing it (%s).',
                      previous)
    self._file.truncate(0)
    self._file.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    self._file.flush()
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.truncate(0)  # Empty: the run ended cleanly.
      self._file.close()  # Closing releases the flock.
      self._file = None
