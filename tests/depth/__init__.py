"""Tests of gradscope.depth: the depth view of feed-forward and residual stacks."""
