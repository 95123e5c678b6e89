"""mmembed: train CLIP-style image/text/audio embedding models.

The library (towers, heads, losses, data, eval, export) imports without the trainer; `mmembed.train` is the
only package that knows about accelerate.
"""

__version__ = "0.1.0"
