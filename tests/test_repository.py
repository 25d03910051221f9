"""The README's commands are the ones CI runs, and they run after the README's install."""

import ast
import glob
import importlib.metadata
import os
import re
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def _module_level_imports(path):
  """Top-level names imported when the module at `path` is imported (not inside functions)."""
  tree = ast.parse(open(path).read())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      node.body = []  # A function's imports run only when it is called.
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name.split('.')[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names.add(node.module.split('.')[0])
  return names


def _installed_by(requirements):
  """Every distribution that `pip install` of `requirements` brings, extras left out."""
  seen, todo = set(), [Requirement(r).name for r in requirements]
  while todo:
    name = canonicalize_name(todo.pop())
    if name in seen:
      continue
    seen.add(name)
    for line in importlib.metadata.requires(name) or []:
      requirement = Requirement(line)
      if requirement.marker is None or requirement.marker.evaluate({'extra': ''}):
        todo.append(requirement.name)
  return seen


def test_readme_commands_import_only_what_their_install_brings():
  """`python -m <package>.main` needs the plain install; scripts/ may need the torch extra."""
  setup = ast.parse(open(os.path.join(ROOT, 'setup.py')).read())
  lists = {node.targets[0].id: node.value for node in setup.body if isinstance(node, ast.Assign)}
  plain = _installed_by(ast.literal_eval(lists['INSTALL_REQUIRES']))
  with_torch = plain | _installed_by(ast.literal_eval(lists['TORCH']))
  providers = importlib.metadata.packages_distributions()
  ours = {'vit_jax', 'detr_jax', 'segmenter_jax', 'configs', 'scripts'}
  missing = {}
  for folder, installed in (('vit_jax', plain), ('detr_jax', plain), ('segmenter_jax', plain),
                            ('scripts', with_torch)):
    for path in glob.glob(os.path.join(ROOT, folder, '*.py')):
      for name in _module_level_imports(path) - ours - set(sys.stdlib_module_names):
        if not {canonicalize_name(d) for d in providers.get(name, [])} & installed:
          missing.setdefault(name, []).append(os.path.relpath(path, ROOT))
  assert not missing, f'imported at module level but not installed: {missing}'
