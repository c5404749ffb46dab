"""retrain: teach a pretrained image network new classes from folders of images."""

__version__ = "0.2.0"
