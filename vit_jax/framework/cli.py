"""The command line shared by `vit_jax.main`, `detr_jax.main` and `segmenter_jax.main`.

  python -m vit_jax.main --config=configs/vit_digits.py --workdir=DIR [--config.key=value ...]

Mistakes the user can fix (config, data, paths) end the run with one line on stderr and exit
code 2, not a traceback. SIGTERM (a preemption notice) or Ctrl-C checkpoints the step in progress
and exits with status 143 or 130 (a second Ctrl-C exits at once, without saving); the same command
then continues the run. One run at a time per workdir: a second one stops with one line.
"""

import os
import re
import signal
import sys
import threading
import traceback
from typing import Optional, Sequence

# Light imports only: a mistake in the flags or the config file is one line within a second; JAX,
# TensorFlow and the tasks are imported by `_train`, once the config has loaded.
from absl import app, flags, logging
from ml_collections import config_flags

from vit_jax.framework import interrupts
from vit_jax.framework.errors import UserError

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
_COMPILATION_CACHE = flags.DEFINE_string(
    'compilation_cache', os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'vit_jax', 'xla'),
    "JAX's persistent compilation cache, so a resumed or repeated run does not compile its "
    "steps again; '' turns it off.")


class _NoneOr(flags.ArgumentParser):
  """A number override that also takes None, which turns a setting off (optim.grad_clip_norm)
  or leaves a duration to its epochs twin (total_steps=None with total_epochs=N)."""

  def __init__(self, number: flags.ArgumentParser):
    self._number = number

  def parse(self, argument):
    return None if argument in ('None', 'none') else self._number.parse(argument)

  def flag_type(self) -> str:
    return self._number.flag_type()


for _type, _parser in ((float, flags.FloatParser()), (int, flags.IntegerParser())):
  config_flags.register_flag_parser_for_type(_type, _NoneOr(_parser))


def fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _initialize_distributed() -> None:
  """jax.distributed.initialize, with a watchdog: when a process never joins, JAX aborts the
  process from C++ (no Python error); the watchdog ends it first with a line that says why."""
  import jax  # pylint: disable=g-import-not-at-top  # Heavy: see the imports above.
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


# The flags `python -m vit_jax.main --help` lists (fit_report passes its own).
TRAIN_FLAGS = ('config', 'workdir', 'compilation_cache', 'distributed', 'coordinator_address',
               'num_processes', 'process_id', 'distributed_timeout')


def run() -> None:
  """Parses flags, builds the task the config names (vit_jax.framework.registry) and trains it."""
  # Required here, not at import: vit_jax.framework.fit_report shares --config but has no workdir.
  flags.mark_flags_as_required(['config', 'workdir'])

  def main(argv):
    if len(argv) > 1:
      fail(f'unexpected arguments {argv[1:]}: use --config=... --workdir=...')
    _train(loaded_config())

  app.run(main, flags_parser=lambda argv: parse_flags(argv, TRAIN_FLAGS))


def _train(config) -> None:
  """Trains as `config` says; a user's mistake, a preemption or Ctrl-C end in one line and an
  exit status."""
  try:
    with interrupts.StartUp():  # Until the train loop takes over Ctrl-C.
      # pylint: disable=g-import-not-at-top  # Heavy: see the imports at the top.
      import jax
      from vit_jax.framework import host_memory, logs, registry, train
      host_memory.reuse_freed_memory_on_cpu()  # Before JAX starts its client's threads.
      if _COMPILATION_CACHE.value:
        jax.config.update('jax_compilation_cache_dir', _COMPILATION_CACHE.value)
      if _DISTRIBUTED.value:
        _initialize_distributed()
      logs.quiet_console()
      overrides = ' '.join(a for a in sys.argv[1:] if a.startswith('--config.'))
      logging.info('Config: %s%s (every value goes to WORKDIR/config.json).',
                   config_flags.get_config_filename(flags.FLAGS['config']),
                   f' {overrides}' if overrides else '')
      task = registry.make_task(config)
    final = train.train_and_evaluate(config, _WORKDIR.value, task)
    if jax.process_index() == 0:
      print(f'Results in {_WORKDIR.value}: final_metrics.json, checkpoints/{final["step"]}, '
            f'config.json, {os.path.basename(logs.log_file(_WORKDIR.value))}; curves and '
            f'predictions: tensorboard --logdir {_WORKDIR.value}', flush=True)
  except UserError as e:
    fail(str(e))
  except KeyboardInterrupt:  # Ctrl-C outside the train loop (start-up, compiling): no step.
    print('interrupted outside a training step; checkpoints already written are kept: run the '
          'same command again to continue', file=sys.stderr)
    sys.exit(128 + signal.SIGINT)
  except train.Preempted as e:  # After KeyboardInterrupt: `train` may not be imported yet.
    print(str(e), file=sys.stderr)
    sys.exit(128 + e.signal)  # The conventional status of a job ended by a signal.


def loaded_config():
  """The config; config_flags defers an OSError from loading the file (a missing file, or one
  the file itself opens) to the config's first use, so it is turned into one line here."""
  config = _CONFIG.value
  try:
    config.get('seed')
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()
    fail(f'cannot load config file {config_flags.get_config_filename(flags.FLAGS["config"])!r}: '
          f'{reason}; pass --config=configs/<name>.py (see configs/)')
  return config


def parse_flags(argv, program_flags: Sequence[str] = TRAIN_FLAGS):
  """absl's parser, with a flag or config-override error turned into one line; --help lists
  `program_flags` (absl's own --help lists only flags defined in the __main__ module)."""
  if any(arg in ('-h', '--help', '--helpshort', '-?') for arg in argv[1:]):
    print(_usage(program_flags))
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(_flag_error(str(e)) if str(e) else type(e).__name__)
  except Exception as e:  # pylint: disable=broad-except
    config_file = _raised_in_config_file(e, argv)
    if config_file:  # The config file's get_config failed: its own message.
      message = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
      fail(f'{config_file}: {type(e).__name__}: {(message.strip().splitlines() or [""])[0]}')
    if not isinstance(e, (KeyError, AttributeError)):
      raise
    # ml_collections: an override of a key that is not there.
    while e.args and isinstance(e.args[0], Exception):  # AttributeError(KeyError(message))
      e = e.args[0]
    message = str(e.args[0]) if e.args else ''
    bad = re.match(r"'(\w+)'", message)
    overrides = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    key = next((o for o in overrides if bad and o.endswith('.' + bad.group(1))), '--config')
    suggestion = re.search(r'Did you mean "(\w+)"', message)
    hint = f' (did you mean {suggestion.group(1)!r}?)' if suggestion else ''
    fail(f'unknown config key in {key}{hint}: only keys the config file defines can be set')


def _usage(program_flags: Sequence[str]) -> str:
  """The program's docstring, then each of its flags with its help and default."""
  lines = [(sys.modules['__main__'].__doc__ or '').strip(), '', 'Flags:']
  for name in program_flags:
    flag = flags.FLAGS[name]
    default = '' if flag.default in (None, '') else f' (default: {flag.default})'
    lines.append(f'  --{name}: {flag.help}{default}')
  lines.append('  --config.KEY=VALUE: overrides one value of the config (any key it defines).')
  return '\n'.join(lines)


def _raised_in_config_file(error: Exception, argv) -> Optional[str]:
  """The --config file if `error` was raised by code in it, else None."""
  values = [a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')]
  if not values:
    return None
  path = os.path.abspath(values[-1].split(':', 1)[0])
  frames = traceback.extract_tb(error.__traceback__)
  return values[-1] if any(os.path.abspath(f.filename) == path for f in frames) else None


def _flag_error(message: str) -> str:
  """The line that says what is wrong: for an error raised by a config file's get_config (e.g.
  a bad ARG in --config=configs/x.py:ARG), its own message, not config_flags' traceback."""
  lines = message.strip().splitlines()
  if 'Error whilst parsing config file' in lines[0]:
    return re.sub(r'^[\w.]+: ', '', lines[-1])
  return lines[0]
