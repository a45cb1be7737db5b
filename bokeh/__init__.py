"""BokehDepth learned models: Stage-1 bokeh generation and Stage-2 DSFA depth fusion.

Plain ``torch.nn.Module`` code: no Lightning here. ``physics`` may be imported, never ``lightning_modules``.

The import name ``bokeh`` is shared with the Bokeh plotting library. Code that imports this package
checks :data:`IS_BOKEHDEPTH` through :func:`bokehdepth_guard.require_bokehdepth` so that the wrong
``bokeh`` fails loudly instead of silently.
"""

IS_BOKEHDEPTH = True
__version__ = "0.1.0"
