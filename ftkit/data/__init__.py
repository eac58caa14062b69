"""Data below the tasks: reading files and built-in datasets into tables, mixing, the tokenization cache, batch helpers,
padding-free packing and the TF-IDF baseline."""
