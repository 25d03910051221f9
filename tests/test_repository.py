"""The README's commands are the ones CI runs."""

import os
import re

from helpers import ROOT


def _readme_commands():
  text = open(os.path.join(ROOT, 'README.md')).read()
  return re.findall(r'```bash\n(.*?)\n```', text, flags=re.S)


def test_readme_opens_with_the_two_commands():
  commands = _readme_commands()
  assert 'python -m vit_jax.main --config=configs/vit_digits.py' in commands[0]
  assert 'pytest' in commands[1]


def test_ci_runs_the_readme_test_command():
  test_command = _readme_commands()[1].strip()
  ci_script = open(os.path.join(ROOT, '.ci', 'run')).read()
  assert test_command in ci_script.splitlines()
