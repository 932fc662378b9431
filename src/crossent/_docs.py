"""The public functions' docstrings, assembled from fragments written once (STYLE 11).

`functional` sets each function's ``__doc__`` from here, so the code there reads top to bottom and
a sentence shared by several losses (weighted 'mean', the legacy arguments, ``dtype=``, the
autograd contract) has one source.
"""

# ruff: noqa: E501  (docstring text)

_WEIGHTED_MEAN = """\
    'mean' with class weights w divides by the summed weights of the counted targets,
    ``sum_i w[t_i] l_i / sum_i w[t_i]`` (ignored targets count in neither sum), exactly as torch
    does; without weights it is the mean over counted targets. All targets ignored gives nan."""

_LEGACY = """\
    size_average, reduce: deprecated, as in torch; when either is given it overrides ``reduction``
    (with torch's warning)."""

_DTYPE = """\
    dtype: None (default) returns the loss in the input's dtype, as torch does; torch.float32 with
        a float16/bfloat16 input returns the float32 loss of ``input.float()`` -- the loss
        transformers computes for 16-bit logits -- without that float32 copy (the math runs in
        float32 anyway; 16-bit rounding of the loss is skipped). The gradient keeps the input's
        dtype. Any other value raises."""

_DETERMINISM = """\
    Results are deterministic: the same inputs on the same device give bitwise-identical loss and
    gradients, run after run and for any number of threads (torch.func and torch.compile, which
    run the composite formulas, are deterministic for a fixed thread count; the linear losses'
    matrix products are the BLAS library's, which may split a long inner dimension across
    threads, as MKL does on AVX-512 CPUs: there, as for F.linear, a fixed thread count).

    Autograd: everything torch's loss supports. torch.func (grad, vjp, jacrev, vmap) and
    torch.compile (fullgraph=True) trace crossent's formulas as plain torch ops. Under
    torch.autocast the loss is torch's: float32 from 16-bit inputs (computed without a float32 copy
    of them). On the fused path the gradient is computed in forward and handed over in backward;
    a second backward (retain_graph=True) computes it again with the same kernel (the same bits),
    and a second derivative (create_graph=True: MAML, Hessian-vector products, gradient
    penalties) recomputes the gradient through the composite formulas, with a graph. Both need the
    loss's inputs as they were in forward; crossent holds them weakly -- keeping the logits alive
    until backward would cost the memory the fused path saves -- so keep a reference to them
    (``logits = model(x); loss = f(logits, ...)``, as most training loops do). If they were freed
    or modified in place (``inplace_backward=True``), backward raises a RuntimeError naming the
    remedy, never a wrong number."""

CROSS_ENTROPY = f"""Cross-entropy between logits and targets; torch.nn.functional.cross_entropy, exactly.

    input: logits (C,), (N, C) or (N, C, d1, ..., dk); float64/32/16 or bfloat16 (16-bit inputs
    compute in float32 and return their own dtype).
    target: class indices (), (N,) or (N, d1, ..., dk), int64 (or uint8 for (C,) and (N, C)
    inputs; other integer dtypes are refused, as torch refuses them), each in [0, C) or equal to
    ignore_index; or class probabilities of the input's shape. A class weight that requires grad
    is refused with class indices (torch does not differentiate it there) and differentiated with
    probabilities, as torch does.

    Per sample, with p = softmax(z) over the class dim and class weights w (1 without):
        indices:        l = (1 - eps) w[t] (-log p[t]) + eps/C sum_c w[c] (-log p[c])
        probabilities:  l = -sum_c w[c] ((1 - eps) t[c] + eps/C) log p[c]
    where eps = label_smoothing. reduction: 'none' (per sample), 'sum', or 'mean'.
{_WEIGHTED_MEAN}
    With probability targets 'mean' divides by the number of samples N*d1*...*dk, as torch does.
{_LEGACY}

    Extensions (keyword-only):
    z_loss: adds ``z_loss * logsumexp(z)**2`` to every counted sample's loss before reduction
        (PaLM's auxiliary loss); 'mean' keeps the denominator above.
    softcap: the logits become ``z = softcap * tanh(input / softcap)`` before everything else
        (Gemma 2); the gradient includes the tanh's derivative.
    inplace_backward: when a gradient is needed, write it into ``input``'s storage, so forward plus
        backward needs no memory beyond the logits; ``input`` is destroyed (its version counter is
        bumped, so autograd refuses any other use of the old values). Without it the caller's
        tensors are never modified.
{_DTYPE}

{_DETERMINISM}
    Equivalent to ``crossent.reference.cross_entropy`` (the formulas, in float64).
    """

NLL_LOSS = f"""Negative log-likelihood of log-probabilities; torch.nn.functional.nll_loss, exactly.

    input: log-probabilities (C,), (N, C) or (N, C, d1, ..., dk); target: class indices as in
    cross_entropy. Per sample l = -w[t] input[t]; ignored targets give 0.
{_WEIGHTED_MEAN}
{_LEGACY}
{_DETERMINISM}
    """

BINARY_CROSS_ENTROPY = f"""Binary cross-entropy of probabilities; torch.nn.functional.binary_cross_entropy, exactly.

    input: probabilities in [0, 1] (checked); target: the same shape, labels or probabilities.
    Per element l = -w (y log p + (1 - y) log(1 - p)), each log clamped at -100 as in torch, so
    p = 0 or 1 gives a finite loss. weight broadcasts to the input. 'mean' averages all elements.
{_LEGACY}
{_DETERMINISM}
    """

BINARY_CROSS_ENTROPY_WITH_LOGITS = f"""Binary cross-entropy of logits; torch.nn.functional.binary_cross_entropy_with_logits, exactly.

    input: logits x; target: the same shape. With pos_weight pw (broadcast over the last dimension,
    one entry per class) and weight w (broadcast to the input), per element
        l = -w (pw y log sigmoid(x) + (1 - y) log(1 - sigmoid(x)))
          =  w ((1 - y) x + (1 + (pw - 1) y) softplus(-x)),
    computed without overflow for any x. 'mean' averages all elements. One fused pass computes the
    loss and its gradient.
{_LEGACY}
{_DETERMINISM}
    """

LINEAR_CROSS_ENTROPY = f"""Cross-entropy of a linear layer's output, without materialising the logits;
    torch.nn.functional.linear_cross_entropy (torch 2.13+), exactly, on any torch crossent supports.

    input: (N, D) or (D,) hidden states, float64/32/16 or bfloat16. linear_weight: (C, D), or
    (C, d1, ..., dk, D) for a K-dimensional loss (torch's ``out_features``; batched input only).
    linear_bias: None, or (C,) / (C, d1, ..., dk). All three of one dtype and device (as for
    F.linear). target: class indices of shape (N,) / () / (N, d1, ..., dk) (int64, or uint8 without
    out_features, as torch), each in [0, C) or ignore_index; or class probabilities of the logits' shape
    (N, C, d1, ..., dk) / (C,) -- torch's rule: probabilities exactly when the shapes are equal.
    weight: (C,) class weights. ignore_index: None means -100 for class indices; with
    probabilities it must stay None (torch raises otherwise, and so does crossent).

    Equivalent to (value, and gradients w.r.t. input, linear_weight and linear_bias)::

        logits = F.linear(input, linear_weight.reshape(-1, D), linear_bias.reshape(-1))  # never built
        logits = logits.reshape(*input.shape[:-1], C, d1, ..., dk)
        loss = crossent.cross_entropy(logits, target, weight,
                                      ignore_index=-100 if ignore_index is None else ignore_index,
                                      reduction=reduction if normalizer is None else "sum",
                                      label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
        if normalizer is not None: loss = loss / normalizer

    (``crossent.reference.linear_cross_entropy`` is this contract, executable, in float64.)
    Per-token losses, class weights, smoothing, z_loss and softcap as in crossent.cross_entropy.
{_WEIGHTED_MEAN}

    options: a ``LinearCrossEntropyOptions`` (or None) on every torch version: torch's class
        (torch >= 2.13), ``crossent.nn.LinearCrossEntropyOptions`` (that same class, or crossent's
        equivalent with torch 2.14's fields before torch 2.13), or any object with those five
        fields. Its values are checked by the installed torch's own rules, as torch checks them
        (``acc_policy="balanced"`` is valid on torch 2.13 and a ValueError from 2.14 on).
        Unlike torch, ``options=None`` does not mean "materialise the logits": crossent never
        does beyond one chunk, except for small CPU problems (N * C <= 1M logits), where the
        composition F.linear + cross_entropy is faster (see crossent._dispatch). Its fields:
        batch_chunk_size / chunking_method: the rows per chunk, as torch computes them
            ("auto" with no batch_chunk_size: crossent's own measured rule, below, on every torch
            -- torch resolves it per version, to a few rows per chunk; None: one chunk of
            batch_chunk_size rows, or all rows; "aspect_ratio[:k]": torch's formula);
        allow_retain_graph: honoured -- the gradients computed in forward are kept, so a second
            backward through the loss reuses them (one gradient-sized copy); without it a second
            backward recomputes them (the same bits), as 'none' always does;
        acc_policy, acc_dtype: accepted, no effect: crossent always runs the softmax and
            accumulates the weight and bias gradients in float32 (float64 for float64 inputs),
            at least as precise as torch's "accurate" policy.
        Every option combination takes the fused path (torch falls back to materialising the
        logits for K-dim, label smoothing or non-int64 targets; crossent does not).

    Extensions (keyword-only):
    z_loss, softcap: as in crossent.cross_entropy.
    normalizer (reduction='mean' only; a number or a one-element tensor): the summed loss is
        divided by it instead of by the count (or summed weights) of counted tokens, for gradient
        accumulation across micro-batches (transformers' ``num_items_in_batch``).
    chunk_size: tokens per chunk; by default chosen from N, D, C, the dtype and the options so that
        one chunk's buffers take at most 7/8 of the bytes of the float32 weight gradient (7D/8
        rows in float32; at least 16 MiB; see backends/chunked/__init__.py).
{_DTYPE}

    Memory: O(chunk_size * C) beyond the inputs and their gradients, never O(N * C).
    FLOPs: 6 N D C P for reduction 'mean'/'sum' (the three products any exact method needs;
    P = d1*...*dk); 8 N D C P for 'none' (backward recomputes the logits, since the per-token
    grad_output is known only then); 2 N D C P when no gradient is needed.
    16-bit inputs: products in the input dtype, softmax math and the accumulation of the weight
    and bias gradients in float32; gradients come back in the inputs' dtypes.
    Gradients w.r.t. the class weight or probability targets are not computed by the fused path
    (it raises if they are required); ``crossent.use_backend("reference")`` computes the contract
    above literally in float64 and gives them.
    Results are deterministic run to run for a given chunk size.
    Autograd as for crossent.cross_entropy: repeated backward, second derivatives (recomputed
    through the composite formulas from input, linear_weight and linear_bias, which the loss holds
    -- (N, D) + (V, D), as F.linear's backward would -- building the N x C logits only then),
    torch.func, torch.compile, autocast (the product in the autocast dtype, the loss in float32,
    as torch).
    """

_LOG_PROB_MATH = """\
    With z the logits, softcapped (``softcap * tanh(z / softcap)``, if given) and then divided by
    ``temperature``, and p = softmax(z) over the last dim, per position i:
        log_probs[i] = log p[i, target[i]] = z[i, t] - logsumexp(z[i])
        entropy[i]   = -sum_c p[i, c] log p[i, c]        (0 log 0 = 0: a -inf logit adds nothing)
    Both are exactly 0 where target == ignore_index, and no gradient flows from those positions.
    Returned in float32 (float64 for float64 inputs), computed relative to each row's max (a
    large common logit offset costs no precision).

    Gradients flow exactly through BOTH outputs, in any combination (a policy-gradient term on
    log_probs plus an entropy bonus; a KL penalty; a masked entropy): for upstream gradients g
    (of log_probs) and h (of entropy) the logits' gradient is
        g [c = t] - p_c (g + h (log p_c + H)),   times (1 - tanh^2) / temperature,
    accumulated in float32. An output whose gradient nobody asks for (an entropy for logging)
    costs nothing in backward."""

_LOG_PROB_AUTOGRAD = """\
    Autograd: repeated backward (retain_graph=True) recomputes the same bits; second derivatives
    (create_graph=True) differentiate the composite formulas (which build the logits then);
    torch.func and torch.compile trace the composite formulas; under torch.autocast the product
    runs in the autocast dtype and the softmax math in float32, as torch's would. Results are
    deterministic run to run and, where the BLAS library's products are, for any number of
    threads (MKL on AVX-512 CPUs splits a long inner dimension across threads)."""

LOG_PROBS = f"""Per-token log-probability of the target class, and optionally the entropy, of logits.

    TRL's ``selective_log_softmax(logits, index)`` and ``entropy_from_logits(logits)`` in one
    memory-lean pass, differentiable through both.

    input: logits (*, C) -- the class dim is the LAST one, as a language model's (B, T, V)
        logits have it (unlike cross_entropy's (N, C, d1..dk)); float64/32/16 or bfloat16; any
        strides (a ``logits[:, :-1]`` slice is read in place, not copied).
    target: class indices (*), int64 (or uint8), each in [0, C) or ignore_index.
    Returns log_probs (*), or (log_probs, entropy) with ``return_entropy=True``.

{_LOG_PROB_MATH}

    Memory: forward reads the logits once and keeps 3 numbers per row (the row max, log of the
    sum of exps, the entropy); backward reads them again and writes their gradient once. Beyond
    the logits and their gradient, one chunk of work buffers (~1M elements on the CPU), never an
    N x C temporary; torch's composition log_softmax + gather + entropy keeps log_softmax's
    N x C output and builds more for the entropy. Small inputs (up to ~0.8M logits on the CPU)
    run that composition: there its fused C++ kernels are faster.
{_LOG_PROB_AUTOGRAD}
    Equivalent to ``crossent.reference.log_probs`` (the formulas, in float64).
    """

LINEAR_LOG_PROBS = f"""Per-token log-probability of the target, and optionally the entropy, of a linear layer's
    output, without materialising the logits: the log-probs of RL post-training (GRPO, RLOO,
    PPO, KTO, DPO) from the hidden states and the LM head.

    input: (*, D) hidden states; linear_weight: (V, D); linear_bias: None or (V,); all three of
        one floating dtype and device. target: class indices (*), each in [0, V) or ignore_index.
    Returns log_probs (*), or (log_probs, entropy) with ``return_entropy=True``.

    Equivalent to (values, and gradients w.r.t. input, linear_weight and linear_bias)::

        logits = F.linear(input, linear_weight, linear_bias)     # (*, V), never built
        crossent.log_probs(logits, target, temperature=temperature, softcap=softcap,
                           ignore_index=ignore_index, return_entropy=return_entropy)

{_LOG_PROB_MATH}

    chunk_size: tokens per chunk (default: the fused backend's memory rule, at most 7/8 of the
        bytes of the float32 weight gradient on the CPU).
    Memory: O(chunk_size * V) beyond the inputs and their gradients, never O(N * V); saved for
        backward: the input (N D) and 3 numbers per token.
    FLOPs: 2 N D V forward; 6 N D V backward, which computes the logits again: the gradient
        depends on per-token upstream gradients known only in backward, and the alternative,
        keeping the logits, is the N x V tensor this function exists to avoid (see
        backends/loops/linear_log_probs.py). 8 N D V in all; 2 N D V without a gradient.
    16-bit inputs: products in the input dtype (as F.linear), softmax math and the weight and
        bias gradients' accumulation in float32; gradients come back in the inputs' dtypes.
{_LOG_PROB_AUTOGRAD}
    Equivalent to ``crossent.reference.linear_log_probs`` (the formulas, in float64).
    """
_DISTILL_COMMON = """\
    ignore_index, reduction: 'mean' divides the summed row losses by the number of counted rows
        (nan when none is counted, as torch's 'mean' over nothing; the gradient is then 0), 'sum',
        or 'none' (N,). normalizer (reduction='mean' only; a number or a one-element tensor): the
        sum is divided by it instead, for gradient accumulation (transformers'
        ``num_items_in_batch``), as in crossent.linear_cross_entropy.
    chunk_size: tokens per chunk (default: crossent's rule, see backends/chunked).

    Gradients: w.r.t. the student's input, linear_weight and linear_bias only; the teacher's
    tensors are constants (read as if detached, as TRL's trainers hold them) and nothing of the
    teacher is kept beyond one chunk. Memory: one chunk of logits (of each model) beyond the
    inputs and the gradients, never O(N V); 16-bit products run in the inputs' dtypes, the
    softmax math in float32 (float64 for float64 inputs). Deterministic on every path (the
    fused kernels bitwise, for any thread count where the BLAS library's products are). torch.func and torch.compile run the composite
    formulas (which build the (N, V) logits); second derivatives recompute through them; under
    torch.autocast each head's product runs in the autocast dtype and the loss is float32.
    (``crossent.reference`` has the contract in float64, executable.)"""

LINEAR_DISTILLATION_LOSS = f"""Distillation of a linear head from a teacher's linear head, without either model's logits.

    input (N, D) and linear_weight (V, D), linear_bias (V,): the student's head; teacher_input
    (N, D_t), teacher_linear_weight (V, D_t), teacher_linear_bias (V,): the teacher's (its hidden
    width may differ from the student's, its vocabulary may not). target: None, or (N,) int64
    class indices (in [0, V) or ignore_index).

    Per row i, with z = softcap(input W^T + b) (s tanh(./s) where ``softcap`` is given), the
    teacher's u = teacher_softcap(teacher_input W_t^T + b_t), temperature T, the student's
    p = softmax(z / T) and the teacher's q = softmax(u / T), and TRL's convention (TRL 1.16,
    ``DistillationTrainer``'s chunked divergence and GKD's ``generalized_jsd_loss``, whose
    temperature also divides both models' capped logits and whose loss is not multiplied by
    T^2)::

        beta = 0        D = KL(q || p) = sum_c q_c (log q_c - log p_c)        forward KL
        beta = 1        D = KL(p || q) = sum_c p_c (log p_c - log q_c)        reverse KL
        0 < beta < 1    D = beta KL(q || m) + (1 - beta) KL(p || m),  m = (1 - beta) p + beta q
        l = soft_weight D + hard_weight CE,  CE = -log softmax(z)[target]  (temperature 1)

    Terms of weight 0 count 0 (0 log 0 = 0: a class masked with a -inf logit adds nothing, where
    torch's F.kl_div gives nan). Each term is computed only when its weight is not 0;
    hard_weight needs target. Rows whose target is ignore_index count in neither term (loss 0,
    not counted by 'mean'); without target every row counts. For Hinton's T^2 scaling pass
    ``soft_weight=temperature**2``.
{_DISTILL_COMMON}
    FLOPs: 6 N D V + 2 N D_t V ('none': 8 N D V + 4 N D_t V; no teacher product when
    soft_weight is 0).
"""

LINEAR_TOPK_DISTILLATION_LOSS = f"""Forward KL from a teacher known only by its top-k tokens, without the student's logits.

    input (N, D), linear_weight (V, D), linear_bias (V,): the student's head. teacher_ids (N, k)
    int64: per row, the teacher's k ids (k <= V, distinct; pad with ignore_index), and
    teacher_log_probs (N, k): their log-probabilities under the teacher (log_softmax of its
    logits at the temperature you distil at: they are used as given), e.g. what a served
    teacher returns (vLLM's ``logprobs``). The student's full softmax p = softmax(z / T), z =
    softcap(input W^T + b), is computed fused. Per row, S = the ids that are not ignore_index,
    q_j = exp(teacher_log_probs)::

        tail=True   l = sum_(j in S) q_j (log q_j - log p_j) + q_tail (log q_tail - log p_tail)
                    q_tail = 1 - sum_S q_j (clamped at 0),  p_tail = sum_(c not in S) p_c
        tail=False  l = sum_(j in S) q'_j (log q'_j - log p'_j),  both renormalised over S:
                    q' = q / sum_S q,  p' = p / sum_S p

    (TRL's ServerDistillationTrainer's ``loss_add_tail`` on and off, at beta = 0.) p_tail is
    summed over the classes outside S -- exact when S holds nearly all of the student's mass,
    where 1 - sum p cancels -- and q_tail is computed as -expm1(logsumexp(log q)). Rows whose ids
    are all ignore_index count 0 and are not counted by 'mean'.

    Checked (on the CPU always, on accelerators with crossent.check_values(True)): ids in range
    and not repeated, log-probs not nan, <= 0 and their probabilities summing to at most 1 per
    row (up to the rounding of their dtype), and with tail=False some mass in every counted row.
{_DISTILL_COMMON}
    FLOPs: 6 N D V (the student's three products; the teacher costs nothing here).
"""
