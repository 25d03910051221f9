"""What goes to the console and what only to WORKDIR/train.log (vit_jax/framework/logs.py). The digits
main job (test_train.test_digits_main_job_reaches_95_percent) counts its console lines up to the
first progress line and checks what the start-up lines say."""

import logging as py_logging
import os

from absl import logging

from vit_jax.framework import logs


def record(level=py_logging.INFO, pathname='vit_jax/framework/train.py', **attributes):
  return py_logging.makeLogRecord(dict(levelno=level, pathname=pathname, msg='m', **attributes))


def test_file_only_lines_and_orbax_info_stay_off_the_console():
  assert logs.for_console(record())
  assert not logs.for_console(record(**logs.FILE_ONLY['extra']))
  assert not logs.for_console(record(pathname='site-packages/orbax/checkpoint/x.py'))
  assert logs.for_console(record(py_logging.WARNING, 'site-packages/orbax/checkpoint/x.py'))


def test_the_log_file_gets_every_line_for_the_length_of_the_run(tmp_path):
  # The absl logger's own level, restored as it was (often unset): set_verbosity(get_verbosity())
  # would pin it to WARNING and hide INFO lines from later tests' caplog.
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  logging.set_verbosity(logging.INFO)  # As the command line sets it (absl's --verbosity).
  try:
    with logs.to_file(str(tmp_path)) as path:
      logging.info('a line for the console too')
      logging.info('the parameter table', **logs.FILE_ONLY)
      py_logging.getLogger('some.library').warning('a library warning')
    logging.info('after the run')
  finally:
    absl_logger.setLevel(level)
  assert path == os.path.join(str(tmp_path), 'train.log')
  text = open(path).read()
  for line in ('a line for the console too', 'the parameter table', 'a library warning'):
    assert line in text
  assert 'after the run' not in text
