"""Every mode of kdseg in one table, and `run`, the one way to start one.

The command line (`kdseg.main`), notebooks and tests call `run(config,
workdir)`: it joins the other processes of a multi-host run, validates the
config once and runs `config.mode`. Each mode is a function
`(config, workdir) -> result dict`; `kdseg.config.MODES` lists their names
for validation.
"""

from typing import Any

import jax
import ml_collections

from kdseg import benchmark
from kdseg import cache_teacher
from kdseg import compare
from kdseg import config as config_lib
from kdseg import evaluate
from kdseg import export
from kdseg import parallel
from kdseg import predict
from kdseg import train

MODES = {
    'train': train.train,  # Supervised: a teacher or a baseline student.
    'distill': train.train,  # A student and its frozen teachers.
    'evaluate': evaluate.evaluate_workdir,
    'compare': compare.run,  # Teacher, baselines and variants over seeds.
    'predict': predict.run,
    'benchmark': benchmark.run,
    'export': export.run,
    'cache_teacher': cache_teacher.run,
}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs `config.mode` in `workdir` and returns its result dict."""
  parallel.initialize_from_config(config)
  config_lib.validate(config, num_devices=jax.device_count())
  return MODES[config.mode](config, workdir)
