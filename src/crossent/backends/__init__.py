"""crossent's backends. Each offers the same functions, in the public argument order, with
arguments already checked (`_checks`) and the options in one frozen `LossOptions`:

    cross_entropy(input, target, weight, opts)
    nll_loss(input, target, weight, opts)
    binary_cross_entropy(input, target, weight, opts)
    binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts)
    linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts)

`crossent._dispatch` picks the backend for each call and returns the function to call; see
docs/ARCHITECTURE.md for the contract in full (shapes, autograd, what a new backend adds).
"""
