"""The notebooks run top to bottom on a CPU (small model, offline)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import ROOT


@pytest.mark.parametrize('name', ['vit.ipynb'])
def test_notebook_runs(name, tmp_path):
  path = os.path.join(ROOT, 'notebooks', name)
  notebook = nbformat.read(path, as_version=4)
  os.environ.setdefault('MPLBACKEND', 'Agg')
  client = NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}})
  client.execute()  # Raises CellExecutionError, with the cell and traceback, on any failure.
  printed = '\n'.join(output.get('text', '') for cell in notebook.cells if cell.cell_type == 'code'
                      for output in cell.get('outputs', []))
  assert 'top-5 classes' in printed
  assert "'num_examples': 360.0" in printed  # The fine-tuning eval scored all test digits.
