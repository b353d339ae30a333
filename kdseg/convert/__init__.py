"""Pretrained weights from torchvision, and models initialised from them.

    python -m kdseg.convert --model deeplabv3_resnet50 --weights W.pth --out DIR

    from kdseg import convert
    variables = convert.from_torchvision('resnet50', state_dict)  # NumPy in/out
    variables = convert.init_from(fresh_variables, DIR)  # overlay by path/shape

Segmentation models ('fcn_resnet50', 'fcn_resnet101', 'deeplabv3_resnet50',
'deeplabv3_resnet101', 'deeplabv3_mobilenet_v3_large',
'lraspp_mobilenet_v3_large') convert into the kdseg model of the same name,
ready to serve as a teacher (`config.teacher.checkpoint = DIR`).
ImageNet classifiers convert into the 'backbone' sub-tree of these kdseg
models (`sources.SOURCES[name].initialises`), for `config.model.init_from`:

  resnet18            deeplabv3_resnet18
  resnet34            deeplabv3_resnet34
  resnet50            deeplabv3_resnet50, fcn_resnet50, deeplabv3plus_resnet50
  resnet101           deeplabv3_resnet101, fcn_resnet101
  mobilenet_v2        deeplabv3_mobilenet_v2
  mobilenet_v3_large  deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large

Nothing here imports torch; reading a .pth file runs torch in a child process
(`kdseg.convert.torch_io`).
"""

from kdseg.convert.overlay import Report
from kdseg.convert.overlay import init_from
from kdseg.convert.overlay import init_state_from
from kdseg.convert.overlay import overlay
from kdseg.convert.sources import available
from kdseg.convert.state_dict import expected_shapes
from kdseg.convert.state_dict import from_torchvision
from kdseg.convert.state_dict import reinit_classifiers

__all__ = [
    'Report', 'available', 'expected_shapes', 'from_torchvision', 'init_from',
    'init_state_from', 'overlay', 'reinit_classifiers',
]
