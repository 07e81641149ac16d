"""lle: low-light enhancement models on the command line and in Python."""
__version__ = "0.1.0"
