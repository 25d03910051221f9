"""The command line shared by `vit_jax.main`, `detr_jax.main` and `segmenter_jax.main`.

  python -m vit_jax.main --config=configs/vit_digits.py --workdir=DIR [--config.key=value ...]

Mistakes the user can fix (config, data, paths) end the run with one line on stderr and exit
code 2, not a traceback. SIGTERM (a preemption notice) checkpoints the step in progress and exits
with status 143; the same command then continues the run.
"""

import logging as py_logging
import os
import re
import signal
import sys
import threading
from typing import Callable

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from vit_jax import task, train
from vit_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/vit_digits.py (configs/x.py:arg passes arg).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and metrics.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Multi-host: call jax.distributed.initialize(); TPU pods and SLURM are '
    'detected, elsewhere pass the three flags below.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
_DISTRIBUTED_TIMEOUT = flags.DEFINE_integer(
    'distributed_timeout', 300, 'Seconds to wait for every process to join before giving up.')
flags.mark_flags_as_required(['config', 'workdir'])


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _quiet_libraries() -> None:
  """Orbax logs every checkpoint step at INFO through absl; keep its warnings only."""
  logging.get_absl_logger().addFilter(
      lambda record: record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname)


def _initialize_distributed() -> None:
  """jax.distributed.initialize, with a watchdog: when a process never joins, JAX aborts the
  process from C++ (no Python error); the watchdog ends it first with a line that says why."""
  timeout = _DISTRIBUTED_TIMEOUT.value
  joined = threading.Event()

  def watchdog():
    if not joined.wait(timeout):
      print(f'error: not every process joined jax.distributed within {timeout} s (coordinator '
            f'{_COORDINATOR.value or "auto-detected"}, {_NUM_PROCESSES.value or "?"} processes): '
            'start all of them with the same --coordinator_address and --num_processes, or '
            'raise --distributed_timeout', file=sys.stderr, flush=True)
      os._exit(2)  # JAX is blocked in C++; nothing else would stop it cleanly.

  threading.Thread(target=watchdog, daemon=True).start()
  jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                             initialization_timeout=timeout + 60)
  joined.set()


def run(make_task: Callable[[object], task.Task]) -> None:
  """Parses flags, builds the task from the config and trains it."""

  def main(argv):
    if len(argv) > 1:
      _fail(f'unexpected arguments {argv[1:]}: use --config=... --workdir=...')
    if _DISTRIBUTED.value:
      _initialize_distributed()
    _quiet_libraries()
    config = _CONFIG.value
    logging.info('Config:\n%s', config)
    try:
      train.train_and_evaluate(config, _WORKDIR.value, make_task(config))
    except UserError as e:
      _fail(str(e))
    except train.Preempted as e:
      print(str(e), file=sys.stderr)
      sys.exit(128 + signal.SIGTERM)  # The conventional status of a job ended by SIGTERM.

  app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv):
  """absl's parser, with a flag or config-override error turned into one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(_flag_error(str(e)) if str(e) else type(e).__name__)
  except (KeyError, AttributeError) as e:  # ml_collections: an override of a key that is not there.
    while e.args and isinstance(e.args[0], Exception):  # AttributeError(KeyError(message))
      e = e.args[0]
    message = str(e.args[0]) if e.args else ''
    bad = re.match(r"'(\w+)'", message)
    overrides = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    key = next((o for o in overrides if bad and o.endswith('.' + bad.group(1))), '--config')
    suggestion = re.search(r'Did you mean "(\w+)"', message)
    hint = f' (did you mean {suggestion.group(1)!r}?)' if suggestion else ''
    _fail(f'unknown config key in {key}{hint}: only keys the config file defines can be set')


def _flag_error(message: str) -> str:
  """The line that says what is wrong: for an error raised by a config file's get_config (e.g.
  a bad ARG in --config=configs/x.py:ARG), its own message, not config_flags' traceback."""
  lines = message.strip().splitlines()
  if 'Error whilst parsing config file' in lines[0]:
    return re.sub(r'^[\w.]+: ', '', lines[-1])
  return lines[0]
