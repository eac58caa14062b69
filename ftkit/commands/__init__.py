"""One module per verb: what `ftkit VERB` does, orchestrating the layers below."""
