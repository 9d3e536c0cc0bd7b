"""Training modules that the `trl-robust` command launches through `accelerate launch`."""
