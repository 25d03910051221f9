"""The one exception type that reaches the user as a single line instead of a traceback, and
the check of a config field that names one of several choices."""

from typing import Mapping, TypeVar

T = TypeVar('T')


class UserError(Exception):
  """Something the user can fix (config, data, paths); the message says what and how."""


def choose(field: str, value, options: Mapping[str, T]) -> T:
  """options[value], or a UserError naming `field` (e.g. 'config.model.name') and the choices."""
  if value not in options:
    raise UserError(f'unknown {field} {value!r}: choose one of {sorted(options)}')
  return options[value]
