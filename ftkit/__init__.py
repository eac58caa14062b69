"""ftkit: fine-tune pretrained Hugging Face checkpoints from one command line."""

__version__ = "0.1.0"
