"""Recorded learning curves: named recording grids, the recorder that trains them into one
Parquet table, and the table itself (read by the replay trainable, the search benchmark and the
what-if)."""

from jepa_ray.curves.grids import GRIDS, Grid, grid
from jepa_ray.curves.table import CurveTable, Row, read_table, row_key

__all__ = ["GRIDS", "CurveTable", "Grid", "Row", "grid", "read_table", "row_key"]
