"""The run's working directory: writable, and used by one run at a time.

Two runs writing one workdir would save over each other's checkpoints and metrics. On a disk,
the first run holds an exclusive `flock` on WORKDIR/run.lock; the kernel drops it when that
process ends in any way (even `kill -9`), so a lock file left behind by a dead run is simply
taken over. On object storage (gs://...), where nothing is released when a process dies, the
lock is an object created only if absent and kept fresh by its holder (`ObjectLock`).
"""

import fcntl
import os
import re
import socket
import threading
import time
from typing import IO, Optional, Union

import jax
from absl import logging

from vit_jax.framework import paths
from vit_jax.framework.errors import UserError

LOCK_FILE = 'run.lock'


def prepare(workdir: str) -> None:
  """Creates `workdir` (a local one) and checks that this process can write to it."""
  probe = paths.join(workdir, f'.write_test_{jax.process_index()}')
  try:
    paths.makedirs(workdir)
    paths.write_text(probe, 'ok')
    paths.remove(probe)
  except OSError as e:
    raise UserError(f'workdir {workdir!r} is not writable ({e.strerror or e}): pass a --workdir '
                    'you can write to') from None
  except Exception as e:  # pylint: disable=broad-except  # Each storage client has its own.
    raise UserError(f'workdir {workdir!r} is not writable ({type(e).__name__}: '
                    f'{(str(e).splitlines() or [""])[0][:200]}): pass a --workdir you can write '
                    'to') from None


def run_lock(workdir: str) -> Union['RunLock', 'ObjectLock']:
  """The lock that keeps a second run out of `workdir`, for its kind of storage."""
  return ObjectLock(workdir) if paths.is_url(workdir) else RunLock(workdir)


def _in_use(workdir: str, holder: str) -> UserError:
  return UserError(f'workdir {workdir} is in use by a running job ({holder}): wait for it to '
                   'end, stop it, or pass another --workdir')


def _holder() -> str:
  return f'pid {os.getpid()} on {socket.gethostname()}'


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
      raise _in_use(os.path.dirname(self._path), holder) from None
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
    self._file.write(_holder() + '\n')
    self._file.flush()
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.truncate(0)  # Empty: the run ended cleanly.
      self._file.close()  # Closing releases the flock.
      self._file = None


class ObjectLock:
  """The run lock on object storage: WORKDIR/run.lock, created only if absent and naming its
  holder (process 0), rewritten every `HEARTBEAT_S` seconds while the run lives and deleted at
  its end. A lock whose holder is gone (its pid dead on this host, or no heartbeat for
  `STALE_S` seconds from another host) is taken over with a warning."""

  HEARTBEAT_S = 30
  STALE_S = 120

  def __init__(self, workdir: str):
    self._workdir = workdir
    self._path = paths.join(workdir, LOCK_FILE)
    self._holder = _holder()
    self._stop = threading.Event()
    self._heartbeat: Optional[threading.Thread] = None

  def __enter__(self) -> 'ObjectLock':
    if jax.process_index() > 0:  # Process 0 speaks for the whole job.
      return self
    if not paths.create_exclusive(self._path, self._holder):
      previous = self._read()
      if not self._is_stale(previous):
        raise _in_use(self._workdir, previous)
      logging.warning('Took over the lock of a run that ended without releasing it (%s).',
                      previous)
      try:
        paths.remove(self._path)
      except FileNotFoundError:  # Its holder ended meanwhile.
        pass
      if not paths.create_exclusive(self._path, self._holder):  # Another run was quicker.
        raise _in_use(self._workdir, self._read())
    self._heartbeat = threading.Thread(target=self._beat, daemon=True)
    self._heartbeat.start()
    return self

  def __exit__(self, *exc) -> None:
    if self._heartbeat is None:
      return
    self._stop.set()
    self._heartbeat.join()
    self._heartbeat = None
    if self._read() == self._holder:
      paths.remove(self._path)

  def _read(self) -> str:
    try:
      return paths.read_text(self._path).strip() or 'another process'
    except FileNotFoundError:
      return 'a run that just ended'

  def _is_stale(self, holder: str) -> bool:
    match = re.fullmatch(r'pid (\d+) on (\S+)', holder)
    if match and match.group(2) == socket.gethostname():
      return not _alive(int(match.group(1)))
    try:
      return time.time() - paths.modified(self._path) > self.STALE_S
    except FileNotFoundError:
      return True

  def _beat(self) -> None:
    while not self._stop.wait(self.HEARTBEAT_S):
      try:
        holder = self._read()
        if holder != self._holder:
          logging.error('The lock of workdir %s was taken over by %s: two runs may now write '
                        'it.', self._workdir, holder)
          return
        paths.write_text(self._path, self._holder)
      except Exception as e:  # pylint: disable=broad-except  # A network hiccup: beat again.
        logging.warning('Could not refresh the lock %s (%s).', self._path, e)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: alive.
    pass
  return True
