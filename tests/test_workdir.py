"""One run per workdir: a live run's lock stops a second one; a killed run's lock is taken over."""

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import ROOT
from vit_jax.framework import workdir as workdir_lib
from vit_jax.framework.errors import UserError

HOLD_LOCK = '''
import sys, time
from vit_jax.framework import workdir
with workdir.RunLock(sys.argv[1]):
  print('locked', flush=True)
  time.sleep(600)
'''


@pytest.mark.slow
def test_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
  holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == 'locked\n'
    with pytest.raises(UserError, match=rf'workdir {tmp_path} is in use by a running job '
                                        rf'\(pid {holder.pid} on .*\): wait for it to end'):
      workdir_lib.RunLock(str(tmp_path)).__enter__()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)

  with workdir_lib.RunLock(str(tmp_path)):
    assert f'pid {os.getpid()} on ' in (tmp_path / workdir_lib.LOCK_FILE).read_text()
  assert f'Took over the lock of a run that ended without releasing it (pid {holder.pid} on ' \
      in caplog.text
  assert (tmp_path / workdir_lib.LOCK_FILE).read_text() == ''  # Released: the next run starts.
  with workdir_lib.RunLock(str(tmp_path)):
    pass


def test_workdir_that_cannot_be_locked_runs_with_a_warning(tmp_path, caplog, monkeypatch):
  def no_locks(file, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
  monkeypatch.setattr(fcntl, 'flock', no_locks)
  with workdir_lib.RunLock(str(tmp_path)):
    pass
  assert f'Cannot lock {tmp_path / workdir_lib.LOCK_FILE} ({os.strerror(errno.ENOLCK)}): a ' \
      'second run started in this workdir would not be stopped.' in caplog.text


def test_object_store_lock_refuses_a_fresh_holder_and_takes_over_a_silent_one(tmp_path, caplog):
  """The lock for buckets (paths' file:// URL stands in for gs:// here; the emulator test in
  test_storage.py covers a holder on this host)."""
  workdir = f'file://{tmp_path}'
  lock = tmp_path / workdir_lib.LOCK_FILE
  lock.write_text('pid 1 on another-host')
  with pytest.raises(UserError, match=rf'workdir {workdir} is in use by a running job '
                                      r'\(pid 1 on another-host\): wait for it to end'):
    workdir_lib.run_lock(workdir).__enter__()
  silent = time.time() - workdir_lib.ObjectLock.STALE_S - 1
  os.utime(lock, (silent, silent))
  with workdir_lib.run_lock(workdir):
    assert lock.read_text() == f'pid {os.getpid()} on {socket.gethostname()}'
  assert 'Took over the lock of a run that ended without releasing it (pid 1 on another-host)' \
      in caplog.text
  assert not lock.exists()  # Removed at the end: the next run starts.
