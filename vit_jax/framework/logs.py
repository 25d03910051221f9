"""Where a run's log lines go: all of them to WORKDIR/train.log, the few a person reads to the
console as well.

Lines logged with `extra=FILE_ONLY` (the parameter table, the hyperparameters) reach only the
file once `quiet_console()` has filtered the console; third-party start-up chatter is held back
to warnings. The file handler exists for the length of a run (`to_file`), also when the loop is
called from Python (tests, notebooks), where the console is left as it is.
"""

import contextlib
import logging as py_logging
import sys
from typing import Iterator

import jax
from absl import logging

from vit_jax.framework import paths

FILE_ONLY = {'extra': {'console': False}}  # logging.info(..., **FILE_ONLY)
# Python loggers of libraries whose INFO lines say nothing the user can act on.
_QUIET_LIBRARIES = (
    'jax._src.xla_bridge',  # "Unable to initialize backend 'tpu'" on every CPU or GPU host.
    'gcsfs',  # "AdaptiveReadaheadCache enabled" on every file it opens in a bucket.
)


def log_file(workdir: str) -> str:
  """Process 0 logs to WORKDIR/train.log, process i to WORKDIR/train.<i>.log."""
  index = jax.process_index()
  return paths.join(workdir, 'train.log' if index == 0 else f'train.{index}.log')


@contextlib.contextmanager
def to_file(folder: str) -> Iterator[str]:
  """Every log line of the `with` block (absl's and the libraries') appended to
  `log_file(folder)`, whose path it gives; `folder` is local: the workdir, or the
  `paths.Mirror` of one in object storage."""
  path = log_file(folder)
  handler = _FileHandler(path)
  handler.setFormatter(logging.PythonFormatter())
  handler.setLevel(py_logging.INFO)
  logger = py_logging.getLogger()  # The root, where absl's records also arrive.
  logger.addHandler(handler)
  try:
    yield path
  finally:
    logger.removeHandler(handler)
    handler.close()


class _FileHandler(py_logging.FileHandler):
  """A line the file cannot take (its disk is full) is lost from the file alone, not printed
  with a traceback: the console has its own copy, and the run says what filled up."""

  def handleError(self, record: py_logging.LogRecord) -> None:
    if not isinstance(sys.exc_info()[1], OSError):
      super().handleError(record)


def for_console(record: py_logging.LogRecord) -> bool:
  """Whether a log line is for the console too (not FILE_ONLY, only Orbax's warnings)."""
  if not getattr(record, 'console', True):
    return False
  # Orbax logs every checkpoint step at INFO through absl, and a failed write as an error with
  # a traceback per thread and array (the run reports the failure in one line): warnings stay.
  # asyncio's 'Task exception was never retrieved' lines are those writes' too; gcsfs logs each
  # retry of a bucket it cannot reach with a traceback (the read that failed says so).
  if '/orbax/' in record.pathname or record.name in ('asyncio', 'gcsfs'):
    return record.levelno == py_logging.WARNING
  return True


def quiet_console() -> None:
  """The console (absl's stderr handler) without the file-only lines, Orbax's INFO lines and
  the libraries' start-up chatter."""
  logging.get_absl_handler().addFilter(for_console)
  for name in _QUIET_LIBRARIES:
    py_logging.getLogger(name).setLevel(py_logging.WARNING)
