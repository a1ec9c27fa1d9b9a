"""sgt-data: build SGT proxy datasets and train / run BAGEL and OmniGen2 on them."""

__version__ = "0.1.0"
