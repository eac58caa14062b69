"""The run directory: its files, writing and finishing it, reading finished runs back, the base a run trains from, the
model card and the plots."""
