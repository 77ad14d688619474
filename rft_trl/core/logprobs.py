"""Token log-probabilities and entropies without materialising more than a chunk of the vocabulary at a time.

With a vocabulary of ~150k tokens, one float32 ``[N, V]`` tensor for N = 2048 tokens is 1.2 GB. The naive
``log_softmax(logits).gather(...)`` keeps several such tensors alive for backward (the float32 upcast, the
log-softmax output, the softmax for the entropy). The functions here walk over blocks of at most ``chunk_size``
rows, keep only per-row statistics (log-sum-exp, entropy) for backward, and recompute the chunk's softmax there.

- [`log_probs_from_logits`], [`entropy_from_logits`] and [`log_probs_and_entropy_from_logits`] take logits the model
  already produced; their extra memory is ``O(chunk_size x V)`` on top of the logits and of their gradient.
- [`log_probs_and_entropy_from_hidden`] takes the last hidden states and the output-embedding weight and never
  builds ``[N, V]`` at all, in forward or backward.

All results are computed in float32, or float64 for float64 inputs, whatever the input dtype.
"""

import torch
import torch.nn.functional as F

__all__ = [
    "entropy_from_logits",
    "log_probs_and_entropy_from_hidden",
    "log_probs_and_entropy_from_logits",
    "log_probs_from_logits",
]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16/fp16 logits lose too much precision in a 150k-way log-sum-exp; float64 inputs stay float64 so that
    # exactness can be checked against a float64 reference.
    return torch.promote_types(dtype, torch.float32)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")


def _blocks(num_rows: int, seq_len: int, chunk_size: int):
    """Yield ``(row_slice, time_slice)`` blocks of a ``[R, T, V]`` tensor holding at most ``chunk_size`` tokens.

    Blocks are taken along R and T separately so that a tensor sliced along T (``logits[:, :-1]``, the usual
    shift) is never copied: every block is a view.
    """
    if seq_len >= chunk_size:
        for r in range(num_rows):
            for t0 in range(0, seq_len, chunk_size):
                yield slice(r, r + 1), slice(t0, min(t0 + chunk_size, seq_len))
    else:
        rows_per_block = max(1, chunk_size // max(seq_len, 1))
        for r0 in range(0, num_rows, rows_per_block):
            yield slice(r0, min(r0 + rows_per_block, num_rows)), slice(0, seq_len)


def _suppressed_index(suppressed_ids, vocab_size: int, device: torch.device) -> torch.Tensor | None:
    """The ids of ``suppressed_ids`` as a long tensor on ``device`` (``None`` for none), checked against ``V``."""
    if suppressed_ids is None:
        return None
    index = torch.as_tensor(suppressed_ids, dtype=torch.long, device=device).reshape(-1)  # [S]
    if index.numel() == 0:
        return None
    if index.min() < 0 or index.max() >= vocab_size:
        raise ValueError(f"suppressed_ids must be token ids in [0, {vocab_size}), got {index.tolist()}.")
    if index.unique().numel() >= vocab_size:
        raise ValueError("suppressed_ids leaves no token to sample: it must not hold every id of the vocabulary.")
    return index


def _as_3d(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    if logits.dim() < 2:
        raise ValueError(f"logits must have shape [..., T, V], got {tuple(logits.shape)}.")
    if labels is not None and labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape logits.shape[:-1] = {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}."
        )
    # Only the leading dims are merged, so slicing along T keeps this a view.
    return logits.reshape(-1, logits.shape[-2], logits.shape[-1])


def _suppress_(z: torch.Tensor, suppressed: torch.Tensor | None) -> torch.Tensor:
    """``z`` ``[..., V]`` with the ``suppressed`` columns set to ``-inf`` (in place): tokens of probability zero."""
    return z if suppressed is None else z.index_fill_(-1, suppressed, float("-inf"))


def _chunk_forward_(
    z: torch.Tensor, labels: torch.Tensor | None, with_entropy: bool, suppressed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """
    ``(logsumexp(z), log p(labels), H)`` of the scaled logits ``z`` ``[..., V]``, each ``[...]``; overwrites ``z``.
    The ``suppressed`` columns are left out of the distribution (probability zero, no part in the entropy).

    Written out (max, shift, exp, sum) rather than with ``logsumexp`` and ``softmax`` so that a chunk costs one
    extra ``[..., V]`` buffer (``p``) instead of three; ``-sum p log p`` is then summed in that same buffer. The sum
    is torch's float32 reduction, more accurate than a matmul-based dot product over 150k terms, which would save
    the buffer but lose an order of magnitude of precision.
    """
    row_max = _suppress_(z, suppressed).amax(dim=-1, keepdim=True)  # [..., 1]
    p = z.sub_(row_max).exp()  # [..., V], unnormalised
    norm = p.sum(dim=-1, keepdim=True)  # [..., 1]
    log_norm = norm.log()
    log_p = z.sub_(log_norm)
    lse = (row_max + log_norm).squeeze(-1)
    log_probs = None if labels is None else log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    if with_entropy and suppressed is not None:
        log_p.index_fill_(-1, suppressed, 0.0)  # p log p is 0 where p is, not 0 * -inf
    entropy = -p.div_(norm).mul_(log_p).sum(-1) if with_entropy else None
    return lse, log_probs, entropy


class _LogSoftmaxStats(torch.autograd.Function):
    """
    Per token of a ``[R, T, V]`` tensor, with ``z = logits / temperature``: ``log p(label) = z[label] - logsumexp(z)``
    (when ``labels`` is given) and ``H = logsumexp(z) - sum softmax(z) * z`` (when ``with_entropy``). An output not
    asked for is returned as NaN and takes no part in backward. Both share one pass over the logits and one
    ``[R, T, V]`` gradient.
    """

    @staticmethod
    def forward(ctx, logits, labels, with_entropy, temperature, chunk_size, suppressed):
        dtype = _compute_dtype(logits.dtype)
        num_rows, seq_len, _ = logits.shape
        lse = torch.empty(num_rows, seq_len, dtype=dtype, device=logits.device)  # [R, T]
        log_probs = torch.full_like(lse, float("nan"))  # [R, T]
        entropy = torch.full_like(lse, float("nan"))  # [R, T]
        for rs, ts in _blocks(num_rows, seq_len, chunk_size):
            z = logits[rs, ts].to(dtype, copy=True).div_(temperature)  # [r, t, V]
            chunk_labels = None if labels is None else labels[rs, ts]
            lse[rs, ts], chunk_log_probs, chunk_entropy = _chunk_forward_(z, chunk_labels, with_entropy, suppressed)
            if chunk_log_probs is not None:
                log_probs[rs, ts] = chunk_log_probs
            if chunk_entropy is not None:
                entropy[rs, ts] = chunk_entropy
            # Dropping the chunk before the next one is built halves the peak (a loop variable outlives its turn).
            del z
        ctx.save_for_backward(logits, labels, lse, entropy if with_entropy else None, suppressed)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        return log_probs, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_log_probs, grad_entropy):
        logits, labels, lse, entropy, suppressed = ctx.saved_tensors
        if labels is None:
            grad_log_probs = None
        if entropy is None:
            grad_entropy = None
        if grad_log_probs is None and grad_entropy is None:
            return None, None, None, None, None, None
        temperature = ctx.temperature
        dtype = lse.dtype
        grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # [R, T, V]
        num_rows, seq_len, _ = logits.shape
        for rs, ts in _blocks(num_rows, seq_len, ctx.chunk_size):
            # The softmax is rebuilt from the saved log-sum-exp; dividing by the temperature is the chain rule.
            z = _suppress_(logits[rs, ts].to(dtype, copy=True).div_(temperature), suppressed)  # [r, t, V]
            grad_logits[rs, ts] = _grad_z_(
                z,
                lse[rs, ts],
                None if entropy is None else entropy[rs, ts],
                None if labels is None else labels[rs, ts],
                None if grad_log_probs is None else grad_log_probs[rs, ts].to(dtype),
                None if grad_entropy is None else grad_entropy[rs, ts].to(dtype),
                suppressed,
            )
            grad_logits[rs, ts] /= temperature
            del z
        return grad_logits, None, None, None, None, None


def log_probs_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    suppressed_ids: torch.Tensor | list[int] | None = None,
) -> torch.Tensor:
    """
    Log-probability of each label under ``softmax(logits / temperature)``, computed a chunk of rows at a time.

    Equal to ``torch.log_softmax(logits.float() / temperature, -1).gather(-1, labels[..., None])[..., 0]``, with
    extra memory ``O(chunk_size x V)`` instead of several ``[..., T, V]`` float32 tensors. Differentiable with
    respect to ``logits`` (first order); the backward recomputes each chunk's softmax from the saved
    log-sum-exp.

    Args:
        logits (`torch.Tensor` of shape `[..., T, V]`):
            Unnormalised scores, any floating dtype. Slices along `T` (e.g. `logits[:, :-1]`) are not copied.
        labels (`torch.Tensor` of shape `[..., T]`, integer):
            Token ids in `[0, V)`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature the logits are divided by; must be positive.
        chunk_size (`int`, *optional*, defaults to `1024`):
            Maximum number of tokens whose `V` scores are held in float32 at once.
        suppressed_ids (`torch.Tensor` or `list[int]`, *optional*):
            Token ids of probability zero: the distribution is the softmax over the other tokens (what sampling with
            these tokens suppressed draws from). A label among them has log-probability `-inf`.

    Returns:
        `torch.Tensor` of shape `[..., T]`: float32 (float64 for float64 logits) log-probabilities.
    """
    _check_temperature(temperature)
    _check_chunk_size(chunk_size)
    logits3 = _as_3d(logits, labels)
    labels3 = labels.reshape(logits3.shape[:-1])
    suppressed = _suppressed_index(suppressed_ids, logits.shape[-1], logits.device)
    log_probs, _ = _LogSoftmaxStats.apply(logits3, labels3, False, float(temperature), chunk_size, suppressed)
    return log_probs.reshape(labels.shape)


def entropy_from_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    suppressed_ids: torch.Tensor | list[int] | None = None,
) -> torch.Tensor:
    """
    Entropy of ``softmax(logits / temperature)`` per token, computed a chunk of rows at a time.

    Equal to ``-(p * log p).sum(-1)`` with ``p = softmax(logits.float() / temperature)``, with extra memory
    ``O(chunk_size x V)``. Differentiable with respect to ``logits`` (first order), so it can serve as an
    entropy bonus.

    Args:
        logits (`torch.Tensor` of shape `[..., T, V]`):
            Unnormalised scores, any floating dtype.
        temperature (`float`, *optional*, defaults to `1.0`):
            Temperature the logits are divided by; must be positive.
        chunk_size (`int`, *optional*, defaults to `1024`):
            Maximum number of tokens whose `V` scores are held in float32 at once.
        suppressed_ids (`torch.Tensor` or `list[int]`, *optional*):
            Token ids of probability zero: the entropy is that of the softmax over the other tokens.

    Returns:
        `torch.Tensor` of shape `[..., T]`: float32 (float64 for float64 logits) entropies in nats.
    """
    _check_temperature(temperature)
    _check_chunk_size(chunk_size)
    logits3 = _as_3d(logits)
    suppressed = _suppressed_index(suppressed_ids, logits.shape[-1], logits.device)
    _, entropy = _LogSoftmaxStats.apply(logits3, None, True, float(temperature), chunk_size, suppressed)
    return entropy.reshape(logits.shape[:-1])


def log_probs_and_entropy_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    suppressed_ids: torch.Tensor | list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    [`log_probs_from_logits`] and [`entropy_from_logits`] in one pass over the logits.

    When both outputs are differentiated (an entropy bonus), the two separate functions each return a
    ``[..., T, V]`` gradient that autograd then adds; this one returns a single gradient, saving one logits-sized
    tensor in backward.

    Args:
        logits (`torch.Tensor` of shape `[..., T, V]`):
            Unnormalised scores, any floating dtype.
        labels (`torch.Tensor` of shape `[..., T]`, integer):
            Token ids in `[0, V)`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Temperature the logits are divided by; must be positive.
        chunk_size (`int`, *optional*, defaults to `1024`):
            Maximum number of tokens whose `V` scores are held in float32 at once.
        suppressed_ids (`torch.Tensor` or `list[int]`, *optional*):
            Token ids of probability zero: the distribution is the softmax over the other tokens (what sampling with
            these tokens suppressed draws from). A label among them has log-probability `-inf`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: log-probabilities and entropies, each `[..., T]`, float32 (float64 for
        float64 logits).
    """
    _check_temperature(temperature)
    _check_chunk_size(chunk_size)
    logits3 = _as_3d(logits, labels)
    labels3 = labels.reshape(logits3.shape[:-1])
    suppressed = _suppressed_index(suppressed_ids, logits.shape[-1], logits.device)
    log_probs, entropy = _LogSoftmaxStats.apply(logits3, labels3, True, float(temperature), chunk_size, suppressed)
    return log_probs.reshape(labels.shape), entropy.reshape(labels.shape)


class _LogProbsAndEntropyFromHidden(torch.autograd.Function):
    """Log-probs and entropies of ``softmax((hidden @ weight.T + bias) / temperature)`` for ``[N, H]`` hidden."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, chunk_size, suppressed):
        dtype = _compute_dtype(hidden.dtype)
        num_tokens = hidden.shape[0]
        log_probs = torch.empty(num_tokens, dtype=dtype, device=hidden.device)  # [N]
        entropy = torch.empty_like(log_probs)  # [N]
        lse = torch.empty_like(log_probs)  # [N]
        for start in range(0, num_tokens, chunk_size):
            rows = slice(start, min(start + chunk_size, num_tokens))
            z = F.linear(hidden[rows], weight, bias).to(dtype).div_(temperature)  # [c, V]
            lse[rows], log_probs[rows], entropy[rows] = _chunk_forward_(z, labels[rows], True, suppressed)
            del z
        ctx.save_for_backward(hidden, weight, bias, labels, lse, entropy, suppressed)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        # Without this, autograd hands us zero tensors for an unused output; None lets backward skip that work.
        ctx.set_materialize_grads(False)
        return log_probs, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_log_probs, grad_entropy):
        hidden, weight, bias, labels, lse, entropy, suppressed = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        temperature = ctx.temperature
        dtype = lse.dtype
        if grad_log_probs is None and grad_entropy is None:
            return None, None, None, None, None, None, None
        grad_hidden = torch.empty_like(hidden) if need_hidden else None  # [N, H]
        # Low-precision weights accumulate their gradient over chunks in float32, then cast once.
        acc_dtype = _compute_dtype(weight.dtype)
        grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=acc_dtype, device=weight.device) if need_bias else None
        num_tokens = hidden.shape[0]
        for start in range(0, num_tokens, ctx.chunk_size):
            rows = slice(start, min(start + ctx.chunk_size, num_tokens))
            z = _suppress_(F.linear(hidden[rows], weight, bias).to(dtype).div_(temperature), suppressed)  # [c, V]
            grad_z = _grad_z_(
                z,
                lse[rows],
                entropy[rows],
                labels[rows],
                None if grad_log_probs is None else grad_log_probs[rows].to(dtype),
                None if grad_entropy is None else grad_entropy[rows].to(dtype),
                suppressed,
            )
            del z
            # The chain rule through `.to(dtype)` and the division by the temperature.
            grad_logits = grad_z.div_(temperature).to(weight.dtype)  # [c, V]
            del grad_z
            if need_hidden:
                grad_hidden[rows] = grad_logits @ weight
            if need_weight:
                grad_weight.addmm_(grad_logits.t().to(acc_dtype), hidden[rows].to(acc_dtype))
            if need_bias:
                grad_bias += grad_logits.sum(0, dtype=acc_dtype)
            del grad_logits
        if need_weight:
            grad_weight = grad_weight.to(weight.dtype)
        if need_bias:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def _grad_z_(z, lse, entropy, labels, grad_log_probs, grad_entropy, suppressed=None):
    """
    Gradient of ``sum(g_lp * log p(y) + g_ent * H)`` with respect to the scaled logits ``z`` ``[..., V]``.

    ``d log p(y) / dz = onehot(y) - p`` and ``dH / dz = -p * (log p + H)``, so the gradient is
    ``g_lp * onehot(y) - p * (g_lp + g_ent * (log p + H))``. It is built in the buffer of ``z``, which it
    overwrites, with one more chunk-sized buffer (``p``) only when the entropy term is present. Either gradient
    may be ``None`` (output unused). The ``suppressed`` columns of ``z`` are ``-inf`` (probability zero): their
    gradient is zero.
    """
    log_p = z.sub_(lse.unsqueeze(-1))
    if grad_entropy is None:
        grad_z = log_p.exp_().mul_(-grad_log_probs.unsqueeze(-1))
    else:
        p = log_p.exp()
        if suppressed is not None:
            log_p.index_fill_(-1, suppressed, 0.0)  # p (log p + H) is 0 where p is, not 0 * -inf
        coef = log_p.add_(entropy.unsqueeze(-1)).mul_(grad_entropy.unsqueeze(-1))
        if grad_log_probs is not None:
            coef.add_(grad_log_probs.unsqueeze(-1))
        grad_z = coef.mul_(p).neg_()
    if grad_log_probs is not None:
        grad_z.scatter_add_(-1, labels.unsqueeze(-1), grad_log_probs.unsqueeze(-1))
    return grad_z


def log_probs_and_entropy_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 256,
    suppressed_ids: torch.Tensor | list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Log-probabilities of ``labels`` and entropies under ``softmax((hidden @ weight.T + bias) / temperature)``,
    without ever building the ``[N, V]`` logits.

    The output projection (the language-model head) is applied to ``chunk_size`` rows at a time, in forward and
    again in backward, where each chunk's logits are recomputed from the saved per-row log-sum-exp and entropy.
    Gradients flow to ``hidden``, ``weight`` and ``bias`` from both outputs, so the entropy can be used as a bonus.
    Extra memory is ``O(chunk_size x V)`` plus the gradients themselves (low-precision weights accumulate theirs
    in float32).

    Args:
        hidden (`torch.Tensor` of shape `[N, H]`):
            Final hidden states of the tokens whose next token is scored (leading dims `[..., H]` are flattened).
        weight (`torch.Tensor` of shape `[V, H]`):
            Output-embedding matrix (`lm_head.weight`), same dtype as `hidden`.
        labels (`torch.Tensor` of shape `[N]`, integer):
            Next-token ids in `[0, V)`, matching the leading dims of `hidden`.
        bias (`torch.Tensor` of shape `[V]`, *optional*):
            Output bias, if the head has one.
        temperature (`float`, *optional*, defaults to `1.0`):
            Temperature the logits are divided by; must be positive.
        chunk_size (`int`, *optional*, defaults to `256`):
            Maximum number of tokens whose `V` logits exist at once. A step holds two float32 `[chunk_size, V]`
            buffers (311 MB at V = 151,936), so the peak stays under 0.7 of one float32 `[N, V]` tensor down to
            N = 1024 (benchmark B3, `docs/benchmarks_b3.md`); the time per token barely depends on it.
        suppressed_ids (`torch.Tensor` or `list[int]`, *optional*):
            Token ids of probability zero: the distribution is the softmax over the other tokens (what sampling with
            these tokens suppressed draws from). A label among them has log-probability `-inf`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: log-probabilities and entropies, each of shape `[N]` (the leading dims
        of `hidden`), float32 (float64 for float64 inputs).
    """
    _check_temperature(temperature)
    _check_chunk_size(chunk_size)
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"weight must have shape [V, H] with H = hidden.shape[-1] = {hidden.shape[-1]}, got {tuple(weight.shape)}."
        )
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"labels must have shape hidden.shape[:-1] = {tuple(hidden.shape[:-1])}, got {tuple(labels.shape)}."
        )
    hidden2 = hidden.reshape(-1, hidden.shape[-1])  # [N, H]
    suppressed = _suppressed_index(suppressed_ids, weight.shape[0], weight.device)
    log_probs, entropy = _LogProbsAndEntropyFromHidden.apply(
        hidden2, weight, bias, labels.reshape(-1), float(temperature), chunk_size, suppressed
    )
    return log_probs.reshape(labels.shape), entropy.reshape(labels.shape)
