"""Secure aggregation (Bonawitz et al., CCS 2017, with the consistency round for an active
hub): nodes send masked vectors; the hub learns only their sum, even when nodes drop out.

``ring``: fixed-point encoding of real vectors, with stated precision and overflow bounds;
``shamir``: t-of-n secret sharing; ``masks``: key agreement and the keyed generator that
expands seeds into masks; ``protocol``: the node's and the hub's side, round by round.
"""
