"""Every file the project reads or writes, on a local disk or in object storage, through one layer.

A path is a local path or a URL: `gs://bucket/dir`, or any scheme fsspec has a filesystem for
(`s3://` once s3fs is installed). Local paths behave as they always did (os, open); URLs go
through fsspec (gcsfs for gs://). Object stores have no folders, no rename and no appending, so
`makedirs` is a no-op there, `rename` copies then deletes, and files written line by line
(train.log, TensorBoard events) are written locally and uploaded by a `Mirror`. Orbax's
checkpoints reach the same storage: their metadata through etils.epath, told here to use fsspec
rather than TensorFlow's client, their arrays through tensorstore.

An emulator: `STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT` points gcsfs at it; importing this
module points tensorstore there too (`TENSORSTORE_GCS_HTTP_URL`, with a dummy token) unless those
are set. TensorFlow's own gs:// client takes no endpoint: where TensorFlow itself reads a URL
(TFDS records, image files in tf.data), `tensorflow_reaches` says whether it can, and the
callers route the file through fsspec when it cannot.
"""

import builtins
import os
import posixpath
import shutil
import tempfile
import threading
from typing import IO, Callable, Optional

import fsspec
import fsspec.config

EMULATOR = os.environ.get('STORAGE_EMULATOR_HOST', '')
if EMULATOR:
  _url = EMULATOR if '://' in EMULATOR else f'http://{EMULATOR}'
  os.environ.setdefault('TENSORSTORE_GCS_HTTP_URL', _url)
  os.environ.setdefault('GOOGLE_AUTH_TOKEN_FOR_TESTING', 'emulator')  # tensorstore: no login.
  # gcsfs' default asks the storage-control API (which no emulator has) for every bucket's type.
  os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')
os.environ.setdefault('EPATH_USE_TF', 'false')  # Orbax's epath: fsspec, the client used here.
for _protocol in ('gs', 'gcs', 's3'):  # Other hosts write the same bucket: never list from memory.
  fsspec.config.conf.setdefault(_protocol, {}).setdefault('use_listings_cache', False)


def is_url(path: str) -> bool:
  return '://' in str(path)


def join(base: str, *parts: str) -> str:
  return posixpath.join(base, *parts) if is_url(base) else os.path.join(base, *parts)


def absolute(path: str) -> str:
  return path if is_url(path) else os.path.abspath(path)


def _fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
  return fsspec.core.url_to_fs(path)


def exists(path: str) -> bool:
  if not is_url(path):
    return os.path.exists(path)
  fs, key = _fs(path)
  return fs.exists(key)


def isdir(path: str) -> bool:
  if not is_url(path):
    return os.path.isdir(path)
  fs, key = _fs(path)
  return fs.isdir(key)


def isfile(path: str) -> bool:
  if not is_url(path):
    return os.path.isfile(path)
  fs, key = _fs(path)
  return fs.isfile(key)


def listdir(path: str) -> list[str]:
  """Names (not paths) in folder `path`, sorted; [] if there is none."""
  if not is_url(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []
  fs, key = _fs(path)
  if not fs.isdir(key):
    return []
  return sorted(posixpath.basename(p.rstrip('/')) for p in fs.ls(key, detail=False)
                if p.rstrip('/') != key.rstrip('/'))


def glob(pattern: str) -> list[str]:
  """Paths matching `pattern` (`*` within a name), sorted, in the pattern's form (URL or not)."""
  if not is_url(pattern):
    import glob as glob_lib  # pylint: disable=g-import-not-at-top
    return sorted(glob_lib.glob(pattern))
  fs, _ = _fs(pattern)
  protocol = pattern.split('://', 1)[0]
  return sorted(f'{protocol}://{p}' for p in fs.glob(pattern))


def makedirs(path: str) -> None:
  """A local folder and its parents; nothing on object stores, where folders are name prefixes
  (so nothing local is ever named after a URL)."""
  if not is_url(path):
    os.makedirs(path, exist_ok=True)


def open(path: str, mode: str = 'r') -> IO:  # pylint: disable=redefined-builtin
  """A file object for reading or (over)writing `path`; on object stores a written file appears
  whole when it is closed."""
  if not is_url(path):
    return builtins.open(path, mode)
  fs, key = _fs(path)
  return fs.open(key, mode)


def read_bytes(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def read_text(path: str) -> str:
  with open(path, 'r') as f:
    return f.read()


def write_text(path: str, text: str) -> None:
  with open(path, 'w') as f:
    f.write(text)


def create_exclusive(path: str, text: str) -> bool:
  """Writes `path` only if it does not exist, atomically (a local O_EXCL file; on object stores
  a precondition on the write). False if it exists."""
  try:
    if not is_url(path):
      with builtins.open(path, 'x') as f:
        f.write(text)
    else:
      fs, key = _fs(path)
      fs.pipe_file(key, text.encode(), mode='create')
  except FileExistsError:
    return False
  return True


def modified(path: str) -> float:
  """When `path` was last written (seconds since the epoch)."""
  if not is_url(path):
    return os.path.getmtime(path)
  fs, key = _fs(path)
  return fs.modified(key).timestamp()


def remove(path: str) -> None:
  """Deletes a file, or a folder with everything in it."""
  if not is_url(path):
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
    return
  fs, key = _fs(path)
  fs.rm(key, recursive=True)


def rename(source: str, target: str) -> None:
  """Moves a file or folder; object stores have no rename: everything is copied, then deleted."""
  if not is_url(source):
    os.rename(source, target)
    return
  fs, key = _fs(source)
  _, target_key = _fs(target)
  if fs.isdir(key):
    for name in fs.find(key):
      fs.copy(name, target_key.rstrip('/') + name[len(key.rstrip('/')):])
  else:
    fs.copy(key, target_key)
  fs.rm(key, recursive=True)


def copy_to_local(url: str, local: str) -> None:
  """Downloads file or folder `url` to `local`, skipping files already there at the same size."""
  fs, key = _fs(url)
  files = fs.find(key, detail=True) if fs.isdir(key) else {key: fs.info(key)}
  for name, info in files.items():
    target = os.path.join(local, os.path.relpath(name, key)) if name != key else local
    if os.path.exists(target) and os.path.getsize(target) == info['size']:
      continue
    os.makedirs(os.path.dirname(target) or '.', exist_ok=True)
    fs.get_file(name, target + '.partial')
    os.replace(target + '.partial', target)  # Only whole files count as copied.


def tensorflow_reaches(path: str) -> bool:
  """Whether TensorFlow's own file system reads `path`: local paths, and gs:// on Google Cloud
  (its client takes no endpoint, so not an emulator's); not s3:// (TensorFlow dropped it)."""
  if not is_url(path):
    return True
  return path.startswith('gs://') and not EMULATOR


def local_stand_in(url: str) -> str:
  """Where `copy_to_local` keeps a copy of `url` for libraries that read through TensorFlow
  when TensorFlow cannot reach `url` (see `tensorflow_reaches`): in the user's cache, under the
  URL's scheme, bucket and path."""
  cache = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  scheme, rest = url.split('://', 1)
  return os.path.join(cache, 'vit_jax', 'storage', scheme, rest.strip('/'))


def tf_read_file(root: str) -> Callable:
  """`tf.io.read_file` for files under `root`, or, where TensorFlow does not reach `root`, the
  same through fsspec (a `tf.numpy_function`, the bytes of one file as a scalar string)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if tensorflow_reaches(root):
    return tf.io.read_file

  def read(path_tensor):
    data = tf.numpy_function(lambda p: read_bytes(p.decode()), [path_tensor], tf.string,
                             stateful=False)
    return tf.ensure_shape(data, [])

  return read


class Mirror:
  """A local folder whose files are uploaded to `target` (every `every_s` seconds, on `sync()`
  and on `close()`), for files that grow by appending, which object stores cannot do. For a
  local `target`, the folder is `target` itself and nothing is copied."""

  def __init__(self, target: str, every_s: float = 30.0):
    self.target = target
    self._remote = is_url(target)
    self.local = tempfile.mkdtemp(prefix='vit_jax_mirror_') if self._remote else target
    self._uploaded: dict[str, tuple[int, float]] = {}
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    if self._remote:
      self._thread = threading.Thread(target=self._sync_every, args=(every_s,), daemon=True)
      self._thread.start()

  def _sync_every(self, every_s: float) -> None:
    while not self._stop.wait(every_s):
      self.sync()

  def sync(self) -> None:
    """Uploads every file that changed since its last upload (whole: objects are immutable)."""
    if not self._remote:
      return
    with self._lock:
      for folder, _, names in os.walk(self.local):
        for name in names:
          path = os.path.join(folder, name)
          stat = os.stat(path)
          if self._uploaded.get(path) == (stat.st_size, stat.st_mtime):
            continue
          relative = os.path.relpath(path, self.local).replace(os.sep, '/')
          fs, key = _fs(join(self.target, relative))
          fs.put_file(path, key)
          self._uploaded[path] = (stat.st_size, stat.st_mtime)

  def close(self) -> None:
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None
    self.sync()
    if self._remote:
      shutil.rmtree(self.local, ignore_errors=True)
