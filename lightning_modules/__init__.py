"""Lightning wiring of BokehDepth: DataModules, LightningModules, configs. Models live in ``bokeh``."""

from bokehdepth_guard import require_bokehdepth

require_bokehdepth()
