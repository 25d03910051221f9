"""Bad input ends the run with one line that says what is wrong, exit code 2, no traceback.

The command line's own parsing (flags, config files, overrides) is checked in this process
through `cli.parse_flags` and `cli.loaded_config`, which print the line and exit; later mistakes
on the UserError they raise; a few cases run the whole command as a user does.
"""

import logging
import os
import re

import pytest
from absl import flags

from helpers import (assert_one_line_error, load_config, multihost_env, run_module,
                     tiny_digits_config)
from vit_jax.classification.task import ClassificationTask
from vit_jax.framework import cli, registry, sharding, train, workdir as workdir_lib
from vit_jax.framework.errors import UserError


def _parse(capsys, *args) -> str:
  """The one line `python -m vit_jax.main ARGS` stops with while reading its flags and config.
  Parsing (and unparsing) absl's flags sets the 'absl' logger's level from its verbosity flag:
  the level is put back afterwards, so that later tests' caplog still sees INFO lines."""
  level = logging.getLogger('absl').level
  flags.FLAGS.unparse_flags()
  try:
    with pytest.raises(SystemExit) as stopped:
      cli.parse_flags(['vit_jax.main', *args])
      cli.loaded_config()
  finally:
    flags.FLAGS.unparse_flags()
    logging.getLogger('absl').setLevel(level)
  assert stopped.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), lines
  return lines[0]


# Overrides (--config.KEY=VALUE) become flags only at a process's first parse: as a user runs it.
def test_unknown_config_key(workdir):
  result = run_module(['vit_jax.main', '--config=configs/vit_digits.py', f'--workdir={workdir}',
                       '--config.seed=1', '--config.input.padd=2'], timeout=300)
  assert_one_line_error(result, 'unknown config key', '--config.input.padd', "'pad'")


def test_wrong_type(workdir):
  result = run_module(['vit_jax.main', '--config=configs/vit_digits.py', f'--workdir={workdir}',
                       '--config.total_steps=many'], timeout=300)
  assert_one_line_error(result, '--config.total_steps=many')


def test_missing_dataset_names_it_and_how_to_provide_it(tmp_path):
  # data_dir as the error suggests it (a config field that starts as None must accept a path).
  config = load_config('vit_b16_i21k')
  config.input.data_dir = str(tmp_path)
  with pytest.raises(UserError) as error:
    registry.make_task(config).num_train_examples()
  for fragment in ("'imagenet21k'", str(tmp_path), '--config.input.data_dir',
                   '--config.input.source=folder'):
    assert fragment in str(error.value)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(UserError, match='is not writable.*--workdir'):
    workdir_lib.prepare(f'{blocker}/run')
  assert blocker.read_text() == 'not a directory'


@pytest.mark.slow
def test_bad_value_in_config(workdir):
  # The whole command, as a user runs it: one line, exit code 2, nothing written.
  result = run_module(['vit_jax.main', '--config=configs/vit_digits.py', f'--workdir={workdir}',
                       '--config.optim.name=adamm'], timeout=300)
  assert_one_line_error(result, "unknown config.optim.name 'adamm'")
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))


@pytest.mark.parametrize('axes, message', [
    ((('data', 3),), 'does not fit 1 devices'),
    ((('data', -1), ('model', -1)), 'at most one axis'),
])
def test_mesh_that_does_not_fit(axes, message):
  with pytest.raises(UserError, match=message):
    sharding.make_mesh(axes)


def test_bad_config_argument_is_one_line(capsys, workdir):
  line = _parse(capsys, '--config=configs/detr_coco.py:r51', f'--workdir={workdir}')
  for fragment in ("unknown backbone 'r51' in configs/detr_coco.py:r51",
                   'configs/detr_coco.py:BACKBONE[,epochs=<int>]', "'dc5_r50'"):
    assert fragment in line


@pytest.mark.parametrize('field, value, choices', [
    ('model.name', 'vit-b', sorted(ClassificationTask.MODELS)),
    ('loss.name', 'xent', ['sigmoid_xent', 'softmax_xent'])])
def test_unknown_model_or_loss_name_lists_the_known_ones(field, value, choices):
  config = tiny_digits_config(**{field: value})
  with pytest.raises(UserError, match=re.escape(f'unknown config.{field} {value!r}: choose one '
                                                f'of {choices}')):
    ClassificationTask(config)


def test_missing_config_file(capsys, workdir):
  line = _parse(capsys, '--config=configs/no_such_config.py', f'--workdir={workdir}')
  for fragment in ("cannot load config file 'configs/no_such_config.py'",
                   'No such file or directory', '--config=configs/<name>.py'):
    assert fragment in line


def test_config_argument_the_config_does_not_know(capsys, workdir):
  line = _parse(capsys, '--config=configs/vit_finetune.py:ti16,mydata', f'--workdir={workdir}')
  assert "unknown dataset 'mydata' in configs/vit_finetune.py:ti16,mydata" in line
  assert "['cifar10', 'cifar100', 'imagenet2012'" in line


def test_error_raised_inside_a_config_file_is_its_own_message(capsys, workdir, tmp_path):
  config_file = tmp_path / 'needs_a_root.py'
  config_file.write_text('import os\n\n\ndef get_config():\n'
                         "  return {'root': os.environ['MY_DATA_ROOT_IS_NOT_SET']}\n")
  line = _parse(capsys, f'--config={config_file}', f'--workdir={workdir}')
  assert f'{config_file}: KeyError: MY_DATA_ROOT_IS_NOT_SET' in line


def test_missing_init_from_is_found_before_the_model_is_built(tmp_path):
  missing = str(tmp_path / 'ViT-Ti_16.npz')
  config = tiny_digits_config(init_from=missing)
  with pytest.raises(UserError, match=re.escape(f'config.init_from {missing!r} does not exist')):
    train.train_and_evaluate(config, str(tmp_path / 'workdir'), ClassificationTask(config))


@pytest.mark.slow
def test_eval_batch_that_does_not_split_over_the_devices_stops_before_training(workdir):
  result = run_module(['vit_jax.main', '--config=configs/vit_digits.py', f'--workdir={workdir}',
                       '--config.input.eval_batch_size=129'],
                      env=multihost_env(2), timeout=300)
  assert_one_line_error(result, 'config.input.eval_batch_size (129) must be a multiple of the 2 '
                        'batch shards: pass --config.input.eval_batch_size=130')
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
