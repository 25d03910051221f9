"""The one parser for a config's argument, `--config=configs/x.py:ARG`.

ARG is names in a fixed order, then typed `key=value` options, comma separated:

  configs/segmenter_ade20k.py:s16_mask,crop=640
  configs/vit_finetune.py:b16,cifar10,upstream=augreg

A config declares what it accepts and gets the values back as attributes:

  args = config_args.parse(arg, 'configs/detr_coco.py', names={'backbone': BACKBONES},
                           options={'epochs': 500})

An option's declaration is its default (the value is read as the default's type: int, float,
bool, str), a type (the option is None unless given), or a tuple of the accepted strings (the
first is the default). A mistake is a ValueError of one line that lists what is accepted; the
CLI prints it as `error: ...`.

Imports nothing but the standard library, so that configs stay data.
"""

import importlib.util
import os
import types
from typing import Any, Collection, Mapping, Optional

_BOOLS = {'true': True, '1': True, 'yes': True, 'false': False, '0': False, 'no': False}


def parse(arg: str, config: str, names: Mapping[str, Collection[str]],
          options: Optional[Mapping[str, Any]] = None) -> types.SimpleNamespace:
  """`arg` -> a namespace with one attribute per name and per option.

  names: name -> the accepted values, each name required, in this order.
  options: key -> default value, type, or tuple of accepted strings (see the module docstring).
  """
  options = dict(options or {})
  usage = _usage(config, names, options)
  items = [item.strip() for item in arg.split(',')] if arg else []
  given = [item for item in items if '=' not in item]
  if len(given) != len(names):
    raise ValueError(f'{config}:{arg} names {len(given)} of {len(names)} '
                     f'({",".join(n.upper() for n in names)}): {usage}')
  values = {}
  for (name, accepted), value in zip(names.items(), given):
    if value not in accepted:
      raise ValueError(f'unknown {name} {value!r} in {config}:{arg}: {usage} with '
                       f'{name.upper()} one of {sorted(accepted)}')
    values[name] = value
  for key, declared in options.items():
    values[key] = _default(declared)
  for item in items:
    if '=' not in item:
      continue
    key, _, text = item.partition('=')
    if key not in options:
      raise ValueError(f'unknown option {key!r} in {config}:{arg}: {usage}')
    try:
      values[key] = _read(text, options[key])
    except ValueError:
      raise ValueError(f'bad value {item!r} in {config}:{arg}: {usage}') from None
  return types.SimpleNamespace(**values)


def import_beside(config_file: str, module: str) -> types.ModuleType:
  """The module `module`.py in the directory of `config_file` (a config's `__file__`):
  configs are loaded by path, from any working directory, so a sibling is not on sys.path."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f'{module}.py')
  spec = importlib.util.spec_from_file_location(module, path)
  loaded = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(loaded)
  return loaded


def _default(declared):
  if isinstance(declared, type):
    return None
  if isinstance(declared, tuple):
    return declared[0]
  return declared


def _read(text: str, declared):
  if isinstance(declared, tuple):
    if text not in declared:
      raise ValueError(text)
    return text
  kind = declared if isinstance(declared, type) else type(declared)
  if kind is bool:
    if text.lower() not in _BOOLS:
      raise ValueError(text)
    return _BOOLS[text.lower()]
  return kind(text)


def _describe(declared) -> str:
  """'<int>' for a typed option, 'a|b' for a choice."""
  if isinstance(declared, tuple):
    return '|'.join(declared)
  kind = declared if isinstance(declared, type) else type(declared)
  return f'<{kind.__name__}>'


def _usage(config: str, names, options) -> str:
  """'use configs/x.py:NAME[,key=<int>]'."""
  usage = f'use {config}:' + ','.join(name.upper() for name in names)
  return usage + ''.join(f'[,{key}={_describe(declared)}]' for key, declared in options.items())
