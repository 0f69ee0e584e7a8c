"""The depth view: gradient flow through the blocks of a deep feed-forward or residual stack."""
