"""Stage-2 depth models: the DSFA block (and its optional pixel defocus cue), base-model wrappers (Depth Anything V2, DPT) and the SILog loss.

    from bokeh.depth import build_depth_model
    model = build_depth_model({"family": "depth_anything_v2", "size": "tiny", "dsfa": {"placement": "posthoc"}})
    depth_m = model(image, stack, K_px_m)  # [B,3,H,W], [B,N,3,H,W], [B,N] -> [B,1,H,W] metres
"""

from .defocus_cue import DefocusCue
from .dsfa import DSFA
from .encoders import DepthAnythingBackbone, DepthBackbone, DPTBackbone, build_backbone
from .losses import silog_loss
from .model import DEFAULT_CONFIG, BokehDepthModel, build_depth_model

__all__ = [
    "DSFA",
    "DefocusCue",
    "DepthBackbone",
    "DepthAnythingBackbone",
    "DPTBackbone",
    "build_backbone",
    "silog_loss",
    "BokehDepthModel",
    "build_depth_model",
    "DEFAULT_CONFIG",
]
