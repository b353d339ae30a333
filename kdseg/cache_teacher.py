"""Mode 'cache_teacher': the teacher's logits over the training split,
computed and stored ahead of a distillation run (`kdseg.teacher_cache`)."""

import os
import time
from typing import Any

import ml_collections

from kdseg import build
from kdseg import stages as stages_lib
from kdseg import teacher_cache


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Builds (or checks) the cache and reports its size; `workdir` is not
  written."""
  del workdir
  train_source, _ = build.get_sources(config)
  teachers, variables, metas = build.load_teachers(config,
                                                   train_source.num_classes)
  stage_terms = [stages_lib.terms(stage, tuple(teachers))
                 for stage in stages_lib.resolve(config)]
  start = time.perf_counter()
  _, _, folder = build.teacher_cache(
      config, teachers, variables, metas, stage_terms,
      build.decode_once(config, train_source))
  size = os.path.getsize(os.path.join(folder, teacher_cache.LOGITS_FILE))
  result = {'folder': folder, 'bytes': size,
            'seconds': time.perf_counter() - start}
  print(f'Teacher cache: {folder}, {size / 2**20:.1f} MiB on disk '
        f"({result['seconds']:.1f} s with decoding).")
  return result
