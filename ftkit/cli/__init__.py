"""The command line: the Typer app, its shared options and error handling, and what it prints."""
