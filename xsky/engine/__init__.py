"""The embedding engine: window planning (numpy), block kernel (torch), dask glue."""

from .plan import AxisPlan, plan_axis, window_geometry

__all__ = ["AxisPlan", "plan_axis", "window_geometry"]
