"""The notebooks' install cell: the jax plugin for the Colab runtime, nothing where installed."""

import fnmatch
import glob
import importlib.util
import os
import shutil
import subprocess
import sys

import nbformat
import pytest

from helpers import ROOT

URL = 'https://example.com/vit_jax.git'


def _install_cells():
  """The first code cell of each notebook, by notebook name."""
  cells = {}
  for path in sorted(glob.glob(os.path.join(ROOT, 'notebooks', '*.ipynb'))):
    notebook = nbformat.read(path, as_version=4)
    cells[os.path.basename(path)] = next(c.source for c in notebook.cells
                                         if c.cell_type == 'code')
  return cells


def _run_install_cell(monkeypatch, source):
  """Runs the cell with `subprocess.run` recorded, not run; returns the commands it ran."""
  commands = []
  monkeypatch.setattr(subprocess, 'run', lambda command, **_: commands.append(command))
  monkeypatch.setattr(sys, 'path', list(sys.path))  # The cell puts the clone on sys.path.
  exec(source, {})  # pylint: disable=exec-used
  return commands


def test_the_notebooks_share_one_install_cell():
  cells = _install_cells()
  assert set(cells) == {'vit.ipynb', 'detr.ipynb', 'detr_panoptic.ipynb', 'segmenter.ipynb'}
  assert len(set(cells.values())) == 1


def test_installs_nothing_where_the_package_is_importable(monkeypatch):
  source = _install_cells()['vit.ipynb']
  assert importlib.util.find_spec('vit_jax') is not None
  assert _run_install_cell(monkeypatch, source) == []


@pytest.mark.parametrize('environ, devices, nvidia_smi, extra', [
    ({'COLAB_TPU_ADDR': '10.0.0.2:8470'}, [], None, '[tpu]'),  # Colab's TPU runtime.
    ({}, ['/dev/accel0', '/dev/accel1'], None, '[tpu]'),  # TPU VM, v4.
    ({}, ['/dev/vfio/0', '/dev/vfio/vfio'], None, '[tpu]'),  # TPU VM, v5e.
    ({}, ['/dev/vfio/vfio'], '/usr/bin/nvidia-smi', '[cuda12]'),  # Colab GPU.
    ({}, ['/dev/vfio/vfio'], None, ''),  # Colab CPU.
])
def test_installs_the_plugin_for_the_runtime(monkeypatch, environ, devices, nvidia_smi, extra):
  source = _install_cells()['vit.ipynb']
  with_url = source.replace("REPO_URL = ''", f'REPO_URL = {URL!r}')
  assert with_url != source
  monkeypatch.delenv('COLAB_TPU_ADDR', raising=False)
  for name, value in environ.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setattr(glob, 'glob', lambda pattern: fnmatch.filter(devices, pattern))
  monkeypatch.setattr(shutil, 'which', {'nvidia-smi': nvidia_smi}.get)
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)  # Not installed yet.
  # `-e` with the extra and nothing that forces a reinstall: pip keeps a runtime's jax that
  # fits setup.py's range, so a TPU runtime still lists its TPU cores.
  assert _run_install_cell(monkeypatch, with_url) == [
      ['git', 'clone', '--depth=1', URL, 'vit_jax_repo'],
      [sys.executable, '-m', 'pip', 'install', '-q', '-e', 'vit_jax_repo' + extra]]


def test_asks_for_the_repository_before_installing(monkeypatch):
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(SystemExit, match='set REPO_URL'):
    _run_install_cell(monkeypatch, _install_cells()['vit.ipynb'])
