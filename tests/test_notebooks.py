"""The notebooks run top to bottom on a CPU (small model, offline)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import ROOT


# What each notebook must print: proof that its cells did their work, not just ran.
EXPECTED_OUTPUT = {
    'vit.ipynb': ['top-5 classes', "'num_examples': 360.0"],  # Fine-tuning scored all digits.
    'detr.ipynb': ['41,524,768 parameters, 106,240 frozen batch-norm values',
                   'top-5 detections', "'AP50':", 'detections above 0.5 in the first image'],
    'segmenter.ipynb': ['parameters loaded from segmenter_shapes.npz', "'num_examples': 64.0",
                        'multi-scale + flip: pixel accuracy', 'class-embedding cosine similarity'],
}


@pytest.mark.parametrize('name', sorted(EXPECTED_OUTPUT))
def test_notebook_runs(name, tmp_path):
  path = os.path.join(ROOT, 'notebooks', name)
  notebook = nbformat.read(path, as_version=4)
  os.environ.setdefault('MPLBACKEND', 'Agg')
  client = NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}})
  client.execute()  # Raises CellExecutionError, with the cell and traceback, on any failure.
  printed = '\n'.join(output.get('text', '') for cell in notebook.cells if cell.cell_type == 'code'
                      for output in cell.get('outputs', []))
  for expected in EXPECTED_OUTPUT[name]:
    assert expected in printed
