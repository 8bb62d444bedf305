"""One module per notebook: a `Settings` dataclass, `run(settings) -> Result`, and `plot_*` functions."""
