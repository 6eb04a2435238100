"""autoseg: self-configuring medical image segmentation, compatible with nnU-Net v2 datasets."""

__version__ = "0.1.0"
