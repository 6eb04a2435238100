"""Dataset fingerprint: spacings, shapes, intensities and class sizes (reference §1.2)."""
