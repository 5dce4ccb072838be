"""keras_winit: weight initialization for Keras 3, and tools to check it.

Public API:

- Initializers (registered as `"keras_winit>Name"`): `VarianceScaling`,
  `GlorotNormal`, `GlorotUniform`, `HeNormal`, `HeUniform`, `LecunNormal`,
  `LecunUniform`, `XavierNormal`, `XavierUniform`, `KaimingNormal`,
  `KaimingUniform`, `ActivationScaling`, `DeltaOrthogonal`. The names
  `"xavier_normal"`, `"xavier_uniform"`, `"kaiming_normal"`,
  `"kaiming_uniform"` and `"delta_orthogonal"` resolve through
  `keras.initializers.get` once keras_winit is imported.
- Gains: `gain`, `truncated_normal_std`.
- Fans: `compute_fans`; layer layouts: `compute_layout_fans`.
- Layer-aware re-initialization of a built model: `initialize` (returns an
  `InitReport`; residual rules "gpt2", "fixup", "zero"), and
  `residual_branches` (the `ResidualBranch`es it finds).
- Monitoring: the `GradientVarianceLogger` callback (per-layer gradient
  statistics of the gradients `fit` applies, in TensorBoard).
- Diagnostics: `diagnose` (returns a `Diagnosis`; rules in `health`, layer
  structure from `walker`), data-driven init `lsuv`
  (Mishkin & Matas 2015), and the `ActivationHistogramLogger` callback.
"""

from keras_winit import fans
from keras_winit import gains
from keras_winit import health
from keras_winit import initializers
from keras_winit import layer_init
from keras_winit import layouts
from keras_winit import walker
from keras_winit.diagnostics import Diagnosis
from keras_winit.diagnostics import Flag
from keras_winit.diagnostics import LayerStats
from keras_winit.diagnostics import diagnose
from keras_winit.fans import compute_fans
from keras_winit.gains import gain
from keras_winit.gains import truncated_normal_std
from keras_winit.initializers import ActivationScaling
from keras_winit.initializers import DeltaOrthogonal
from keras_winit.initializers import GlorotNormal
from keras_winit.initializers import GlorotUniform
from keras_winit.initializers import HeNormal
from keras_winit.initializers import HeUniform
from keras_winit.initializers import KaimingNormal
from keras_winit.initializers import KaimingUniform
from keras_winit.initializers import LecunNormal
from keras_winit.initializers import LecunUniform
from keras_winit.initializers import VarianceScaling
from keras_winit.initializers import XavierNormal
from keras_winit.initializers import XavierUniform
from keras_winit.layer_init import InitReport
from keras_winit.layer_init import ResidualBranch
from keras_winit.layer_init import UnknownLayerWarning
from keras_winit.layer_init import initialize
from keras_winit.layer_init import residual_branches
from keras_winit.layouts import compute_layout_fans
from keras_winit.lsuv import LSUVResult
from keras_winit.lsuv import LSUVWarning
from keras_winit.lsuv import lsuv
from keras_winit.monitoring import ActivationHistogramLogger
from keras_winit.monitoring import GradientVarianceLogger
from keras_winit.monitoring import GradientVarianceWarning

__version__ = "0.1.0"

initializers.register_aliases()

__all__ = [
    "ActivationHistogramLogger",
    "ActivationScaling",
    "DeltaOrthogonal",
    "Diagnosis",
    "Flag",
    "GlorotNormal",
    "GradientVarianceLogger",
    "GradientVarianceWarning",
    "GlorotUniform",
    "HeNormal",
    "HeUniform",
    "InitReport",
    "KaimingNormal",
    "KaimingUniform",
    "LSUVResult",
    "LSUVWarning",
    "LayerStats",
    "LecunNormal",
    "LecunUniform",
    "ResidualBranch",
    "UnknownLayerWarning",
    "VarianceScaling",
    "XavierNormal",
    "XavierUniform",
    "compute_fans",
    "compute_layout_fans",
    "diagnose",
    "fans",
    "gain",
    "gains",
    "health",
    "initialize",
    "initializers",
    "layer_init",
    "layouts",
    "lsuv",
    "residual_branches",
    "truncated_normal_std",
    "walker",
]
