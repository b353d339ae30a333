r"""Validation mIoU of a trained student with its convolutions fake-quantized.

Restores the student of a run's workdir (`kdseg.build.restore_student`) and
evaluates it on the config's eval split inside
`kdseg.ops.fake_quant.quantizing(MODE)`: per output channel int8 weights and
per tensor int8 inputs over each batch's range, what quantization-aware
training simulates. Beside the float result, it says how much of an int8
LiteRT model's loss the convolutions' rounding explains.

  python benchmarks/fake_quant_eval.py --config configs/camvid_distill.py:cpu \
      --config.data.kwargs.manual_dir=../shared/camvid --workdir WORKDIR
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from kdseg import build
from kdseg import configs
from kdseg import evaluate
from kdseg import parallel
from kdseg.ops import fake_quant

configs.put_on_path()
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Run config file.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'The trained run.')


def evaluate_quantized(config, workdir: str, mode: str) -> float:
  """mIoU of the workdir's student, convolutions traced under `mode`."""
  num_classes, _ = build.classes(config, workdir)
  model, variables, _ = build.restore_student(config, workdir, num_classes)
  val = build.decode_once(config, build.split_source(
      config, config.data.eval_split))
  # A fresh trace inside the context: jit caches by function and shapes, so
  # each mode gets its own evaluate call in its own context.
  with fake_quant.quantizing(mode):
    result = evaluate.evaluate(
        model, variables['params'], variables.get('batch_stats', {}), val,
        mesh=parallel.make_mesh(), batch_size=config.eval.batch_size,
        pad_to=config.data.eval_pad_to, progress_bar=False)
  return result['miou']


def main(argv) -> None:
  del argv
  for mode in ('', 'int8'):
    miou = evaluate_quantized(_CONFIG.value, _WORKDIR.value, mode)
    print(f"{_WORKDIR.value}: {mode or 'float32'} convolutions, validation "
          f'mIoU {100 * miou:.2f}', flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
