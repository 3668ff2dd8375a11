"""Pictures and plots of a run: reconstruction grids, GIFD stage rows, loss curves."""

from fedinvert.report.figures import image_grid, leakage_caption, save_grid, save_loss_plot

__all__ = ["image_grid", "leakage_caption", "save_grid", "save_loss_plot"]
