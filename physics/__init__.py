"""Differentiable thin-lens bokeh physics: camera geometry, apertures, renderers, stacks, scenes, depth from bokeh.

Imports torch, kornia and numpy only: nothing here knows about networks, Lightning or configs.
Units: depth and focus distance in metres (``*_m``), blur radii in pixels (``radius_px``), the blur strength
``K`` in px*m on the single metric axis: signed radius r = K * (1/focus_m - 1/depth_m).
"""
