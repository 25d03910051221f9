"""Runs the notebooks top to bottom on the CPU and commits-ready writes them back with outputs.

  python scripts/execute_notebooks.py                       # every notebooks/*.ipynb
  python scripts/execute_notebooks.py notebooks/vit.ipynb   # some

Each notebook starts from a clean state (outputs cleared) and runs in an empty temporary folder.
The outputs kept are small and free of this machine: stderr (logs) dropped, the temporary folder
and home paths replaced, PNGs downscaled and palette-coded, execution times and widget state
removed. The picture of a cell tagged `readme_figure` is also written to
docs/figures/<notebook>.png, the README's figure of that task. tests/test_notebooks.py executes
the notebooks with the same functions.
"""

import argparse
import base64
import glob
import io
import os
import re
import sys
import tempfile

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = os.path.join(ROOT, 'docs', 'figures')
FIGURE_TAG = 'readme_figure'
MAX_WIDTH = 1100  # Pixels: wider plots are scaled down (drawings are narrower, kept sharp).
MAX_BYTES = 60_000


def clear(notebook) -> None:
  """Outputs, execution counts and execution metadata removed: the state a test starts from."""
  notebook.metadata.pop('widgets', None)
  for cell in notebook.cells:
    cell.metadata.pop('execution', None)
    if cell.cell_type == 'code':
      cell.outputs, cell.execution_count = [], None


def execute(notebook, folder: str, timeout: int = 600) -> None:
  """Runs every cell in `folder` (the notebook's working directory); raises nbclient's
  CellExecutionError, with the cell and its traceback, on the first failure."""
  from nbclient import NotebookClient  # The notebooks extra; the rest of scripts/ lacks it.
  # The kernel's figures as PNG outputs (an MPLBACKEND=Agg from outside would show none).
  os.environ['MPLBACKEND'] = 'module://matplotlib_inline.backend_inline'
  NotebookClient(notebook, timeout=timeout, kernel_name='python3',
                 resources={'metadata': {'path': folder}}).execute()


def printed(notebook) -> str:
  """Everything the code cells printed (stdout and stderr streams, text results)."""
  parts = []
  for cell in notebook.cells:
    for output in cell.get('outputs', []) if cell.cell_type == 'code' else []:
      parts.append(output.get('text', '') or output.get('data', {}).get('text/plain', ''))
  return '\n'.join(parts)


def small_png(data: str) -> str:
  """A base64 PNG in at most 256 colours (plots and drawings have few), at most MAX_WIDTH wide
  and scaled down further while over MAX_BYTES (photographs)."""
  image = Image.open(io.BytesIO(base64.b64decode(data))).convert('RGB')
  scale = min(1.0, MAX_WIDTH / image.width)
  while True:
    size = (round(image.width * scale), round(image.height * scale))
    resized = image.resize(size, Image.Resampling.LANCZOS) if scale < 1 else image
    buffer = io.BytesIO()
    resized.quantize(256, dither=Image.Dither.NONE).save(buffer, 'png', optimize=True)
    if buffer.tell() <= MAX_BYTES or scale < 0.3:
      return base64.b64encode(buffer.getvalue()).decode('ascii')
    scale *= 0.8


def tidy(notebook, folder: str) -> None:
  """Keeps outputs a reader needs and that do not depend on this machine or run."""
  replacements = [(re.escape(folder), '.'),  # The working directory, then others'.
                  (re.escape(tempfile.gettempdir()) + r'/[\w.-]+', '<temporary folder>'),
                  (re.escape(ROOT), '<repository>'), (re.escape(os.path.expanduser('~')), '~'),
                  (r' in \d+(\.\d+)? s\b', '')]  # Durations ('300 steps in 181.8 s').
  for cell in notebook.cells:
    cell.metadata.pop('execution', None)
    if cell.cell_type != 'code':
      continue
    kept = []
    for output in cell.outputs:
      if output.get('name') == 'stderr':
        continue  # Logs and warnings: timings, paths, library noise.
      if 'text' in output:
        for pattern, new in replacements:
          output.text = re.sub(pattern, new, output.text)
      data = output.get('data', {})
      if 'image/png' in data:
        data['image/png'] = small_png(data['image/png'])
        data.pop('image/jpeg', None)  # PIL images come in both formats: one is enough.
      data.pop('application/vnd.jupyter.widget-view+json', None)
      kept.append(output)
    cell.outputs = kept
  notebook.metadata.pop('widgets', None)


def figure(notebook) -> bytes | None:
  """The PNG of the first cell tagged FIGURE_TAG, if any."""
  for cell in notebook.cells:
    if FIGURE_TAG in cell.metadata.get('tags', []):
      for output in cell.get('outputs', []):
        if 'image/png' in output.get('data', {}):
          return base64.b64decode(output['data']['image/png'])
  return None


def run(path: str) -> None:
  import nbformat  # The notebooks extra.
  notebook = nbformat.read(path, as_version=4)
  clear(notebook)
  with tempfile.TemporaryDirectory() as folder:
    execute(notebook, folder)
    tidy(notebook, folder)
  nbformat.write(notebook, path)
  png = figure(notebook)
  if png is not None:
    os.makedirs(FIGURES, exist_ok=True)
    name = os.path.splitext(os.path.basename(path))[0] + '.png'
    with open(os.path.join(FIGURES, name), 'wb') as f:
      f.write(png)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('notebooks', nargs='*',
                      default=sorted(glob.glob(os.path.join(ROOT, 'notebooks', '*.ipynb'))))
  for path in parser.parse_args(argv).notebooks:
    print(f'executing {os.path.relpath(path, ROOT)}', flush=True)
    run(path)


if __name__ == '__main__':
  main(sys.argv[1:])
