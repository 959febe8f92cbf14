"""The recurrent state of a MambaVL stream: :class:`MambaVLCache`.

A Mamba mixer's whole memory of the past is its convolution state (the last ``conv_kernel - 1`` inputs) and its
SSM state. With them carried from call to call, video tokens can arrive in chunks of any length and the model's
outputs after the last chunk equal one forward over the concatenated tokens, in memory that does not grow with
the stream. See the "Streaming and state" concept page of the documentation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .configuration_mambavl import MambaVLConfig

__all__ = ["MambaVLCache"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class MambaVLCache:
    """Everything a MambaVL stream remembers, per batch row (one stream per row; all rows advance together).

    Per fusion layer (``num_fusion_layers`` entries), for the **video** mixer:

    - ``conv_states[i]``: ``(b, d_inner, conv_kernel - 1)`` the last inputs of the depthwise causal convolution;
    - ``ssm_states[i]``: ``(b, d_inner, state_size)`` the selective scan's state ``h_t`` (float32 for
      float16 / bfloat16 tokens, like the scan's ``last_state``).

    The question mixers keep no state across calls: a question is read, never continued.

    Pooling (``config.pool_window``):

    - ``None``: ``pool_state (b, hidden_size)`` is the running sum of the fused video tokens (after the final
      norm), so ``pool(y^V)`` is the mean over every token seen (a stream equals the clip model on the
      concatenation);
    - ``W``: ``pool_state (b, W, hidden_size)`` holds the last ``W`` fused video tokens (zeros before ``W``
      tokens were seen), and ``pool(y^V)`` is their mean.

    ``seen_tokens`` (tensor ``_seen (1,)`` int64) counts the video tokens seen.

    Questions (set by the first call of a stream, then reused): ``verb_question (b, Lv, hidden_size)`` and
    ``noun_question (b, Ln, hidden_size)`` with their ``(b, L)`` attention masks. With ``fusion_scan="separate"``
    they are the **fused** question tokens after the final norm (a separate scan never sees the video, so they
    are computed once per stream); with ``"joint"`` they are the encoded question tokens entering the fusion,
    re-read from the current video states at every call without being written into them.

    The cache is updated in place by the model (its tensors are replaced, never modified in place, so autograd
    through a stream stays valid; :meth:`detach` cuts the graph between chunks).

    Args:
        config: the model's :class:`~mambavl.MambaVLConfig` (``fusion_type`` must be ``"mamba"``).
        batch_size: number of streams ``b``.
        dtype: dtype of the video tokens at fusion width (the model's dtype).
        device: device of the states.

    Example:

    >>> import torch
    >>> from transformers import BertConfig
    >>> from mambavl import MambaVLConfig, MambaVLForActionRecognition
    >>> text = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    ...                   intermediate_size=32)
    >>> model = MambaVLForActionRecognition(MambaVLConfig(hidden_size=32, video_feature_size=24, text_config=text))
    >>> questions = dict(verb_input_ids=torch.randint(0, 100, (1, 5)), noun_input_ids=torch.randint(0, 100, (1, 4)))
    >>> out = model(video_features=torch.randn(1, 3, 24), **questions, use_cache=True)  # the stream's first chunk
    >>> cache = out.cache_params
    >>> size = cache.nbytes
    >>> for _ in range(5):  # later chunks: the questions are remembered
    ...     out = model(video_features=torch.randn(1, 1, 24), cache_params=cache, use_cache=True)
    >>> cache.seen_tokens, cache.nbytes == size, tuple(out.verb_logits.shape)
    (8, True, (1, 97))
    """

    #: Names of the tensors of :meth:`to_tensors`, in order.
    TENSOR_NAMES: tuple[str, ...] = (
        "conv_states", "ssm_states", "seen_tokens", "pool_state", "verb_question", "verb_attention_mask",
        "noun_question", "noun_attention_mask",
    )  # fmt: skip

    def __init__(
        self,
        config: MambaVLConfig,
        batch_size: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        if config.fusion_type != "mamba":
            raise ValueError(
                f"MambaVLCache needs fusion_type='mamba' (a recurrent fusion), got {config.fusion_type!r}: the "
                "transformer and MLP fusions have no fixed-size state."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        self.num_layers = config.num_fusion_layers
        self.batch_size = batch_size
        self.intermediate_size, self.state_size = config.intermediate_size, config.state_size
        self.conv_kernel, self.hidden_size = config.conv_kernel, config.hidden_size
        self.pool_window = config.pool_window
        self.fusion_scan = config.fusion_scan
        self.dtype = dtype
        self.state_dtype = torch.float32 if dtype in _LOW_PRECISION else dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.reset()

    # ---- state ---------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the stream: zero states, nothing seen, no questions (the next call starts a new stream)."""
        b, d, kw = self.batch_size, self.intermediate_size, self.conv_kernel - 1
        kwargs = {"device": self.device}
        self.conv_states = [torch.zeros(b, d, kw, dtype=self.dtype, **kwargs) for _ in range(self.num_layers)]
        self.ssm_states = [
            torch.zeros(b, d, self.state_size, dtype=self.state_dtype, **kwargs) for _ in range(self.num_layers)
        ]
        self._seen = torch.zeros(1, dtype=torch.long, **kwargs)
        if self.pool_window is None:
            self.pool_state = torch.zeros(b, self.hidden_size, dtype=self.state_dtype, **kwargs)
        else:
            self.pool_state = torch.zeros(b, self.pool_window, self.hidden_size, dtype=self.dtype, **kwargs)
        self.verb_question = self.noun_question = None
        self.verb_attention_mask = self.noun_attention_mask = None
        self._question_ids: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def has_questions(self) -> bool:
        """Whether the stream's questions are stored (after its first call)."""
        return self.verb_question is not None

    @property
    def seen_tokens(self) -> int:
        """Number of video tokens seen by the stream (one host sync)."""
        return int(self._seen.item())

    def _tensors(self) -> list[torch.Tensor]:
        tensors = [*self.conv_states, *self.ssm_states, self._seen, self.pool_state]
        tensors += [t for t in (self.verb_question, self.verb_attention_mask) if t is not None]
        tensors += [t for t in (self.noun_question, self.noun_attention_mask) if t is not None]
        return tensors + [t for t in self._question_ids or () if t is not None]

    @property
    def nbytes(self) -> int:
        """Size of every tensor the cache holds, in bytes. Constant along a stream after its first call."""
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def detach(self) -> MambaVLCache:
        """Detach every state from the autograd graph (truncated back-propagation through a stream). In place."""
        self._apply(lambda t: t.detach())
        return self

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MambaVLCache:
        """Move the cache to ``device`` and / or cast its token tensors to ``dtype`` (SSM states and the running
        pool sum stay float32 for float16 / bfloat16, as the scan computes them). In place; returns the cache."""
        if dtype is not None:
            self.dtype = dtype
            self.state_dtype = torch.float32 if dtype in _LOW_PRECISION else dtype
        if device is not None:
            self.device = torch.device(device)
        dev = self.device
        self.conv_states = [t.to(dev, self.dtype) for t in self.conv_states]
        self.ssm_states = [t.to(dev, self.state_dtype) for t in self.ssm_states]
        self._seen = self._seen.to(dev)
        self.pool_state = self.pool_state.to(dev, self.state_dtype if self.pool_window is None else self.dtype)
        for name in ("verb_question", "noun_question"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(dev, self.dtype))
        for name in ("verb_attention_mask", "noun_attention_mask"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(dev))
        if self._question_ids is not None:
            self._question_ids = tuple(None if t is None else t.to(dev) for t in self._question_ids)
        return self

    def _apply(self, fn) -> None:
        self.conv_states = [fn(t) for t in self.conv_states]
        self.ssm_states = [fn(t) for t in self.ssm_states]
        self._seen, self.pool_state = fn(self._seen), fn(self.pool_state)
        for name in ("verb_question", "noun_question", "verb_attention_mask", "noun_attention_mask"):
            if getattr(self, name) is not None:
                setattr(self, name, fn(getattr(self, name)))

    # ---- questions -----------------------------------------------------------------------------------------

    def needs_questions(self, verb_input_ids: torch.Tensor | None, noun_input_ids: torch.Tensor | None) -> bool:
        """Whether the questions must be encoded now (the stream's first call); records their ids.

        Later calls may omit the question ids; ids that are given must equal the stream's (``reset()`` the cache,
        or start a new one, to ask other questions).

        Raises:
            ValueError: ids that differ from the stream's questions.
        """
        if not self.has_questions:
            self._question_ids = (verb_input_ids, noun_input_ids)
            return True
        given_ids = (verb_input_ids, noun_input_ids)
        for name, given, stored in zip(("verb", "noun"), given_ids, self._question_ids, strict=True):
            if given is not None and stored is not None and not torch.equal(given.to(stored.device), stored):
                raise ValueError(
                    f"`{name}_input_ids` differ from the questions this stream was started with: a cache encodes "
                    "its questions once. Call `cache_params.reset()` (or pass a new cache) to ask other questions."
                )
        return False

    def set_questions(
        self,
        verb_question: torch.Tensor,
        noun_question: torch.Tensor,
        verb_attention_mask: torch.Tensor | None,
        noun_attention_mask: torch.Tensor | None,
    ) -> None:
        """Store the stream's question tokens ``(b, L, hidden_size)`` and masks ``(b, L)`` (``None``: all valid)."""

        def mask(m: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
            return torch.ones(q.shape[:2], dtype=torch.long, device=q.device) if m is None else m

        self.verb_question, self.noun_question = verb_question, noun_question
        self.verb_attention_mask = mask(verb_attention_mask, verb_question)
        self.noun_attention_mask = mask(noun_attention_mask, noun_question)

    # ---- pooling -------------------------------------------------------------------------------------------

    def update_pool(self, video: torch.Tensor) -> torch.Tensor:
        """Add the fused video tokens ``(b, l, hidden_size)`` of this call; return ``pool(y^V)`` ``(b, hidden_size)``
        over every token seen (``pool_window=None``) or the last ``pool_window``. Also counts ``seen_tokens``."""
        self._seen = self._seen + video.shape[1]
        if self.pool_window is None:
            self.pool_state = self.pool_state + video.sum(dim=1, dtype=self.pool_state.dtype)
            return (self.pool_state / self._seen.to(self.pool_state.dtype)).to(video.dtype)
        W = self.pool_window
        self.pool_state = torch.cat([self.pool_state, video.to(self.pool_state.dtype)], dim=1)[:, -W:]
        count = self._seen.clamp(max=W).to(self.pool_state.dtype)
        return (self.pool_state.sum(dim=1) / count).to(video.dtype)

    # ---- flat tensor view (export) ------------------------------------------------------------------------

    def to_tensors(self) -> tuple[torch.Tensor, ...]:
        """The cache as a flat tuple of tensors, in the order of :attr:`TENSOR_NAMES`, for exporting one streaming
        step (e.g. to ONNX: new video tokens and these tensors in, logits and the updated tensors out):

        ``conv_states (layers, b, d_inner, conv_kernel - 1)``, ``ssm_states (layers, b, d_inner, state_size)``,
        ``seen_tokens (1,)`` int64, ``pool_state`` ``(b, hidden_size)`` or ``(b, pool_window, hidden_size)``,
        ``verb_question (b, Lv, hidden_size)``, ``verb_attention_mask (b, Lv)``,
        ``noun_question (b, Ln, hidden_size)``, ``noun_attention_mask (b, Ln)``.

        Raises:
            ValueError: before the stream's first call (no questions yet).
        """
        if not self.has_questions:
            raise ValueError(
                "MambaVLCache.to_tensors: the cache has no questions yet; run the stream's first call (with the "
                "question ids) before taking its tensors."
            )
        return (
            torch.stack(self.conv_states), torch.stack(self.ssm_states), self._seen, self.pool_state,
            self.verb_question, self.verb_attention_mask, self.noun_question, self.noun_attention_mask,
        )  # fmt: skip

    def update_from_tensors(self, tensors: Sequence[torch.Tensor]) -> MambaVLCache:
        """Set the cache from :meth:`to_tensors`' tuple (the tensors are used, not copied). In place."""
        if len(tensors) != len(self.TENSOR_NAMES):
            raise ValueError(
                f"MambaVLCache.update_from_tensors: expected {len(self.TENSOR_NAMES)} tensors "
                f"{self.TENSOR_NAMES}, got {len(tensors)}."
            )
        conv, ssm, seen, pool, verb, verb_mask, noun, noun_mask = tensors
        b, d, L = self.batch_size, self.intermediate_size, self.num_layers
        expected_pool = (b, self.hidden_size) if self.pool_window is None else (b, self.pool_window, self.hidden_size)
        for name, t, shape in (
            ("conv_states", conv, (L, b, d, self.conv_kernel - 1)), ("ssm_states", ssm, (L, b, d, self.state_size)),
            ("seen_tokens", seen, (1,)), ("pool_state", pool, expected_pool),
        ):  # fmt: skip
            if tuple(t.shape) != shape:
                raise ValueError(f"MambaVLCache: `{name}` must have shape {shape}, got {tuple(t.shape)}.")
        for name, q, m in (("verb", verb, verb_mask), ("noun", noun, noun_mask)):
            if q.dim() != 3 or q.shape[0] != b or q.shape[2] != self.hidden_size or tuple(m.shape) != q.shape[:2]:
                raise ValueError(
                    f"MambaVLCache: `{name}_question` must be (b={b}, L, {self.hidden_size}) with a (b, L) mask, got "
                    f"{tuple(q.shape)} and {tuple(m.shape)}."
                )
        self.conv_states, self.ssm_states = list(conv.unbind(0)), list(ssm.unbind(0))
        self._seen, self.pool_state = seen, pool
        self.verb_question, self.verb_attention_mask = verb, verb_mask
        self.noun_question, self.noun_attention_mask = noun, noun_mask
        self._question_ids = (None, None)
        return self

    @classmethod
    def from_tensors(cls, config: MambaVLConfig, tensors: Sequence[torch.Tensor]) -> MambaVLCache:
        """A cache holding :meth:`to_tensors`' tuple (batch size, dtype and device read from the tensors)."""
        if len(tensors) != len(cls.TENSOR_NAMES):
            raise ValueError(
                f"MambaVLCache.from_tensors: expected {len(cls.TENSOR_NAMES)} tensors {cls.TENSOR_NAMES}, "
                f"got {len(tensors)}."
            )
        conv = tensors[0]
        cache = cls(config, int(conv.shape[1]), dtype=conv.dtype, device=conv.device)
        return cache.update_from_tensors(tensors)

    def __repr__(self) -> str:
        return (
            f"MambaVLCache(layers={self.num_layers}, batch_size={self.batch_size}, fusion_scan={self.fusion_scan!r}, "
            f"pool_window={self.pool_window}, dtype={self.dtype}, device={self.device}, nbytes={self.nbytes})"
        )
