"""Converts a torchvision state dict into a kdseg checkpoint.

  python -m kdseg.convert --model NAME --weights FILE.pth --out DIR
      [--num-classes N] [--no-aux]
  python -m kdseg.convert --list

DIR gets the layout of a training run's checkpoint
(`DIR/checkpoints/0/{model,meta}`): a converted segmentation model serves as
a teacher (`config.teacher.checkpoint = DIR`) or is evaluated
(`--config.mode=evaluate --workdir DIR`); a converted backbone initialises a
student (`config.model.init_from = DIR`). .pth files are read with PyTorch
(`pip install kdseg[convert]`); .npz files need only NumPy.
"""

import argparse
import os
import sys
from typing import Optional
import warnings

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from kdseg import checkpoint  # pylint: disable=g-import-not-at-top
from kdseg import files as files_lib
from kdseg import models
from kdseg.convert import sources
from kdseg.convert import state_dict as state_dict_lib
from kdseg.convert import torch_io
from kdseg.convert import trees



def describe_sources() -> str:
  """One line per convertible model: what it becomes."""
  lines = []
  for name in sources.available():
    source = sources.get(name)
    if source.is_backbone:
      what = 'backbone of ' + ', '.join(source.initialises)
    else:
      what = f'kdseg model {source.model}'
    lines.append(f'  {name:<30} -> {what}')
  return '\n'.join(lines)


def convert(name: str, weights: str, out: str, *,
            num_classes: Optional[int] = None, aux: bool = True,
            seed: int = 0) -> dict:
  """Converts `weights` and writes the checkpoint; returns its meta."""
  source = sources.get(name)
  state = torch_io.load_state_dict(weights)
  if not aux:
    if source.is_backbone or name.startswith('lraspp'):
      raise ValueError(f'--no-aux: {name} has no auxiliary classifier.')
    state = {k: v for k, v in state.items()
             if not k.startswith('aux_classifier.')}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    variables = state_dict_lib.from_torchvision(
        name, state, num_classes=num_classes, seed=seed)
  for warning in caught:
    print(f'WARNING: {warning.message}', file=sys.stderr)
  meta = {
      'model': name,
      'kind': 'backbone' if source.is_backbone else 'segmentation',
      'source': {'library': 'torchvision', 'model': name,
                 'weights': os.path.abspath(weights),
                 'sha256': files_lib.sha256(weights)},
  }
  if source.is_backbone:
    meta['initialises'] = list(source.initialises)
  else:
    bias = trees.flatten(variables)[f'params/{source.classifiers[0]}/bias']
    meta['num_classes'] = int(bias.shape[0])
    meta['options'] = ({} if name.startswith('lraspp') else
                       {'aux': 'aux_classifier' in variables['params']})
  meta['params'] = models.count_params(variables)
  checkpoint.save_variables(out, variables, meta)
  return meta


def usage(meta: dict, out: str) -> str:
  """How to use the checkpoint in a config."""
  if meta['kind'] == 'backbone':
    return (f"config.model.init_from = '{out}'  # with config.model.name in "
            f"{meta['initialises']}")
  return (f"config.teacher.name = '{meta['model']}'; "
          f"config.teacher.options = {meta['options']}; "
          f"config.teacher.checkpoint = '{out}'  "
          f"(a {meta['num_classes']}-class model)")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m kdseg.convert', description=__doc__.splitlines()[0],
      epilog='Convertible models:\n' + describe_sources(),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--list', action='store_true',
                      help='list the convertible models and exit')
  parser.add_argument('--model', choices=sources.available(),
                      metavar='NAME', help='torchvision model name')
  parser.add_argument('--weights', help='state dict file (.pth or .npz)')
  parser.add_argument('--out', help='output directory (a new or empty one)')
  parser.add_argument('--num-classes', type=int, help='classes of the result '
                      '(re-initialises the classifier layers if it differs)')
  parser.add_argument('--no-aux', action='store_true',
                      help='drop the auxiliary classifier')
  parser.add_argument('--seed', type=int, default=0,
                      help='seed of re-initialised classifier layers')
  args = parser.parse_args(argv)
  if args.list:
    print(describe_sources())
    return 0
  for flag in ('model', 'weights', 'out'):
    if not getattr(args, flag):
      parser.error(f'--{flag} is required')
  ckpt = checkpoint.checkpoint_dir(args.out)
  if os.path.isdir(ckpt) and os.listdir(ckpt):
    parser.error(f'{ckpt} already holds checkpoints; give a new --out')
  if args.num_classes is not None and args.num_classes < 1:
    parser.error('--num-classes must be positive')
  try:
    meta = convert(args.model, args.weights, args.out,
                   num_classes=args.num_classes, aux=not args.no_aux,
                   seed=args.seed)
  except (FileNotFoundError, ImportError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  out = os.path.abspath(args.out)
  print(f"Converted torchvision {args.model} ({meta['params']:,d} "
        f'parameters) into {ckpt}/0')
  print(usage(meta, out))
  return 0


if __name__ == '__main__':
  sys.exit(main())
