"""Stage-1: a K-conditioned bokeh generator (no depth input), physics-calibrated and physics-guided.

- :mod:`.conditioning`: K embedding (metric K / k_scale -> MLP, learned null K for CFG), trained-range policy.
- :mod:`.flux_adapter`: K adapter for FluxTransformer2DModel (FLUX.1-Kontext) as nn.Module attention processors.
- :mod:`.compact`: the embedded default backbone, a small pixel-space UNet2DConditionModel.
- :mod:`.flow`: rectified-flow loss and sampler (FlowMatchEulerDiscreteScheduler).
- :mod:`.guidance`: depth-free physics guidance (flux conservation, stack consistency).
- :mod:`.calibration`: K calibration (the strength to run at for a frame to show the asked K), fitted by physics.
- :mod:`.generator`: stack generation (same noise per frame, aspect ratio kept, K-CFG, LAB colour transfer).
"""

from .calibration import KCalibration, fit_k_calibration
from .conditioning import KEmbedding, KRange, KRangeError
from .compact import CompactBokehUNet, build_compact
from .flux_adapter import (AdapterMismatchError, FluxKAdapter, KAdapterAttnProcessor, install_k_adapter,
                           load_adapter, save_adapter)
from .generator import (BokehGenerator, CompactBokehGenerator, FluxKontextBokehGenerator, StackResult,
                        lab_color_transfer, working_size)
from .guidance import GuidanceConfig, PhysicsGuidance

__all__ = [
    "KEmbedding", "KRange", "KRangeError", "CompactBokehUNet", "build_compact", "AdapterMismatchError",
    "FluxKAdapter", "KAdapterAttnProcessor", "install_k_adapter", "load_adapter", "save_adapter", "BokehGenerator",
    "CompactBokehGenerator", "FluxKontextBokehGenerator", "StackResult", "lab_color_transfer", "working_size",
    "GuidanceConfig", "PhysicsGuidance", "KCalibration", "fit_k_calibration",
]
