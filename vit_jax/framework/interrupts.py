"""Ctrl-C while a job starts, kept where Python would drop it.

Python runs a signal's handler in whatever Python code the main thread runs next. When that is a
garbage-collector callback (JAX registers one, and tracing and compiling collect often), the
KeyboardInterrupt it raises is printed as "Exception ignored" and dropped: a job interrupted while
it was starting went on to train to the end. Within `StartUp`, Ctrl-C raises KeyboardInterrupt as
usual and is also remembered; one that did not stop the block (dropped, or caught on the way) is
raised again at `end()` or when the block ends, and a dropped one prints no "Exception ignored"
traceback.
Light imports only: the command line enters it before importing JAX.
"""

import signal
import sys
import threading


class StartUp:
  """with StartUp() as start_up: ... start-up ...; start_up.end() (or the block's end), then
  whatever comes next (the train loop) takes the signal its own way."""

  def __init__(self):
    self._received = False
    self._previous = None
    self._previous_unraisable_hook = None
    self._installed = False

  def _on_ctrl_c(self, signum, frame):
    self._received = True
    raise KeyboardInterrupt

  def _on_unraisable(self, unraisable):
    ours = self._installed and self._received and unraisable.exc_type is KeyboardInterrupt
    if not ours:
      self._previous_unraisable_hook(unraisable)

  def __enter__(self) -> 'StartUp':
    if threading.current_thread() is threading.main_thread():  # Signals reach it alone.
      self._previous = signal.signal(signal.SIGINT, self._on_ctrl_c)
      self._previous_unraisable_hook, sys.unraisablehook = sys.unraisablehook, self._on_unraisable
      self._installed = True
    return self

  def end(self) -> None:
    """Gives Ctrl-C back to the handler from before; raises KeyboardInterrupt if one came."""
    self._restore()
    if self._received:
      self._received = False
      raise KeyboardInterrupt

  def __exit__(self, error_type, error, traceback) -> None:
    if error_type is None:
      self.end()
    else:  # Already stopping: a KeyboardInterrupt that got through, or an error.
      self._restore()

  def _restore(self) -> None:
    if self._installed:
      # None: the previous handler was not installed from Python; Python's own is the nearest.
      signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
      # A hook installed since wraps ours (the checkpoint module's, for good): ours stays in its
      # chain and passes everything on.
      if sys.unraisablehook == self._on_unraisable:
        sys.unraisablehook = self._previous_unraisable_hook
      self._installed = False
