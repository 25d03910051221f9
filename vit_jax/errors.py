"""The one exception type that reaches the user as a single line instead of a traceback."""


class UserError(Exception):
  """Something the user can fix (config, data, paths); the message says what and how."""
