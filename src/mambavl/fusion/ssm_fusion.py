"""SSM-Fusion (Algorithm 1 of the MambaVL paper): a selective state-space fusion of video and question tokens.

Each modality has its own Mamba mixer (input projection to ``x, z``, depthwise causal convolution, ``x_proj``
giving ``(Δ-rank, B, C)``, ``dt_proj``, skip ``D``, gate ``SiLU(z)``, ``out_proj``), so the input-dependent
``B``, ``C`` and step ``Δ`` are modality-specific, while the state matrix ``A`` is **one parameter shared by
both modalities** (stored as ``A_log``, ``A = -exp(A_log)``)::

    B^V, C^V, Δ^V = mixer_V(x^V)          B^T, C^T, Δ^T = mixer_T(x^T)
    Ā = exp(Δ · A),  B̄ = Δ · B           (the same A for both)
    h_t = Ā_t h_{t-1} + B̄_t x_t,   y_t = C_t h_t + D x_t

With ``fusion_scan="separate"`` (the paper) each modality is scanned on its own and the two are coupled through
the shared ``A``; with ``fusion_scan="joint"`` one scan runs over ``[video; question]`` so the question tokens
start from the video's final state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from ..cache import MambaVLCache
from ..configuration_mambavl import MambaVLConfig
from ..ops import selective_scan
from ..ops.causal_conv1d import causal_conv1d
from .common import FusionOutput, fusion_output_from_tokens

__all__ = ["MambaFusion", "MambaFusionLayer", "SSMFusion", "SelectiveMixer"]


class ScanInputs(NamedTuple):
    """One modality's inputs to the selective scan, in the scan layout.

    ``u, delta, z: (b, d_inner, l)``; ``B, C: (b, N, l)``. ``delta`` is ``Linear_Δ(x)`` before the bias and
    softplus. ``conv_state: (b, d_inner, conv_kernel - 1)``, the convolution's last inputs, when asked for.
    """

    u: torch.Tensor
    delta: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    z: torch.Tensor
    conv_state: torch.Tensor | None = None


def _channels_first_linear(module: nn.Module, x: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
    """``module(x)`` for ``x (b, l, in)``, returned channels first: a contiguous ``(b, out, l)``.

    A plain ``nn.Linear`` (no hooks) is applied as one ``weight @ x^T`` matmul that writes the scan layout directly
    (no transposing copy). Anything else (a PEFT/LoRA wrapper, a quantized linear, a module with hooks or with a
    forward replaced on the instance) runs through its own forward, so that whatever it adds to the plain product (and
    its gradients) is kept.

    Args:
        module: a linear layer ``in -> out`` (``nn.Linear`` or a wrapper of one).
        x: ``(b, l, in)``.
        add_bias: include the module's bias; with ``False`` the result is ``module(x) - bias`` (the selective scan
            adds the ``dt_proj`` bias itself).

    Returns:
        ``(b, out, l)``, contiguous.
    """
    plain = type(module) is nn.Linear and not (
        module._forward_hooks or module._forward_pre_hooks or nn.modules.module._global_forward_hooks
        or nn.modules.module._global_forward_pre_hooks
        or "forward" in vars(module)  # a forward replaced on the instance (accelerate's offloading hooks)
    )  # fmt: skip
    if plain:
        out = torch.matmul(module.weight, x.transpose(1, 2))
        if add_bias and module.bias is not None:
            out = out + module.bias[:, None]
        return out
    out = module(x)
    bias = getattr(module, "bias", None)
    if not add_bias and isinstance(bias, torch.Tensor):
        out = out - bias.to(out.dtype)
    return out.transpose(1, 2).contiguous()


class SelectiveMixer(nn.Module):
    """The modality-specific part of a Mamba mixer: everything but the state matrix ``A``.

    Args:
        config: a :class:`~mambavl.MambaVLConfig` (uses ``hidden_size``, ``expand``, ``state_size``,
            ``conv_kernel``, ``time_step_rank``, ``use_bias``, ``use_conv_bias``).
    """

    def __init__(self, config: MambaVLConfig):
        super().__init__()
        d_inner, rank, n = config.intermediate_size, config.time_step_rank, config.state_size
        self.d_inner, self.time_step_rank, self.state_size = d_inner, rank, n
        self.in_proj = nn.Linear(config.hidden_size, 2 * d_inner, bias=config.use_bias)
        self.conv1d = nn.Conv1d(
            d_inner, d_inner, config.conv_kernel, groups=d_inner, padding=config.conv_kernel - 1,
            bias=config.use_conv_bias,
        )  # fmt: skip
        self.x_proj = nn.Linear(d_inner, rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(rank, d_inner, bias=True)
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(d_inner, config.hidden_size, bias=config.use_bias)

    def scan_inputs(
        self, hidden_states: torch.Tensor, conv_state: torch.Tensor | None = None, return_conv_state: bool = False
    ) -> ScanInputs:
        """Project ``hidden_states (b, l, hidden_size)`` to this modality's scan inputs.

        The projections are written straight into the scan layout (channels first, time contiguous), as in
        mamba-ssm's own mixer, so the CUDA kernels get their inputs without copies. ``conv_state
        (b, d_inner, conv_kernel - 1)`` continues the causal convolution after earlier tokens (zeros when
        ``None``); with ``return_conv_state`` the result's ``conv_state`` is the one to carry to the next tokens.
        """
        xz = _channels_first_linear(self.in_proj, hidden_states)  # (b, 2 * d_inner, l), contiguous
        x, z = xz.chunk(2, dim=1)
        conv = causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu", conv_state, return_conv_state)
        x, conv_state = conv if return_conv_state else (conv, None)
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, l, rank + 2N)
        dt, B, C = x_dbl.split([self.time_step_rank, self.state_size, self.state_size], dim=-1)
        delta = _channels_first_linear(self.dt_proj, dt, add_bias=False)  # (b, d_inner, l); bias added by the scan
        return ScanInputs(x, delta, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), z, conv_state)

    def forward(
        self,
        hidden_states: torch.Tensor,
        A: torch.Tensor,
        backend: str = "auto",
        conv_state: torch.Tensor | None = None,
        ssm_state: torch.Tensor | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mix one modality with the given state matrix.

        Args:
            hidden_states: ``(b, l, hidden_size)`` tokens of this modality.
            A: ``(d_inner, N)`` state matrix (negative), shared with the other modality.
            backend: selective-scan backend, see :func:`mambavl.ops.selective_scan`.
            conv_state: ``(b, d_inner, conv_kernel - 1)`` convolution state to continue from (zeros if ``None``).
            ssm_state: ``(b, d_inner, N)`` scan state to continue from (zeros if ``None``).
            return_state: also return the states after these tokens.

        Returns:
            ``(b, l, hidden_size)``; with ``return_state``, ``(out, conv_state, ssm_state)``.
        """
        s = self.scan_inputs(hidden_states, conv_state, return_conv_state=return_state)
        res = selective_scan(
            s.u, s.delta, A, s.B, s.C, D=self.D.float(), z=s.z, delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True, return_last_state=return_state, backend=backend, initial_state=ssm_state,
        )  # fmt: skip
        if return_state:
            return self.out_proj(res[0].transpose(1, 2)), s.conv_state, res[1]
        return self.out_proj(res.transpose(1, 2))

    def gated_output(self, y: torch.Tensor, s: ScanInputs) -> torch.Tensor:
        """Skip, gate and project a scan output ``y (b, d_inner, l)`` computed without ``D`` and ``z``."""
        y = (y + s.u * self.D[:, None].to(y.dtype)) * F.silu(s.z)
        return self.out_proj(y.transpose(1, 2))

    def delta_with_bias(self, s: ScanInputs) -> torch.Tensor:
        """``Δ = softplus(Linear_Δ(x) + bias)``, ``(b, d_inner, l)``."""
        return F.softplus(s.delta + self.dt_proj.bias[:, None].to(s.delta.dtype))


class SSMFusion(nn.Module):
    """SSM-Fusion (Algorithm 1): one shared ``A_log (d_inner, N)``, one :class:`SelectiveMixer` per modality.

    Args:
        config: a :class:`~mambavl.MambaVLConfig`; ``fusion_scan`` picks separate (paper) or joint scans and
            ``ssm_backend`` the scan implementation.

    Example:

    >>> import torch
    >>> from mambavl import MambaVLConfig
    >>> from mambavl.fusion import SSMFusion
    >>> fusion = SSMFusion(MambaVLConfig(hidden_size=32, state_size=4, video_feature_size=8))
    >>> video, question = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    >>> y_video, (y_question,) = fusion(video, [question])
    >>> tuple(y_video.shape), tuple(y_question.shape)
    ((2, 6, 32), (2, 5, 32))
    """

    def __init__(self, config: MambaVLConfig):
        super().__init__()
        self.config = config
        self.A_log = nn.Parameter(s4d_real_A_log(config.intermediate_size, config.state_size))
        self.A_log._no_weight_decay = True
        self.video_mixer = SelectiveMixer(config)
        self.text_mixer = SelectiveMixer(config)

    @property
    def A(self) -> torch.Tensor:
        """The shared state matrix ``A = -exp(A_log)``, ``(d_inner, N)``, float32."""
        return -torch.exp(self.A_log.float())

    def forward(
        self, video: torch.Tensor, questions: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Fuse video tokens with one or more question token sequences.

        Args:
            video: ``(b, F, hidden_size)`` video tokens (all valid).
            questions: sequences ``(b, L_i, hidden_size)`` of question tokens, right-padded. Each is fused with
                the same video tokens (the verb and the noun question of the paper).

        Returns:
            ``(y_video (b, F, hidden_size), [y_question_i (b, L_i, hidden_size)])``.
        """
        A, backend = self.A, self.config.ssm_backend
        if self.config.fusion_scan == "separate":
            return self.video_mixer(video, A, backend), [self.text_mixer(q, A, backend) for q in questions]
        return self._joint(video, questions, A, backend)

    def _joint(
        self, video: torch.Tensor, questions: Sequence[torch.Tensor], A: torch.Tensor, backend: str
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # One scan over [video; question] per question, batched: the questions are padded to a common length
        # (padding sits after every valid token, so the causal scan never lets it reach them) and stacked along
        # the batch. The video part of every scan is the same, so the first copy is returned.
        b, num_frames = video.shape[:2]
        lengths = [q.shape[1] for q in questions]
        longest = max(lengths)
        texts = torch.cat([F.pad(q, (0, 0, 0, longest - q.shape[1])) for q in questions])
        sv, st = self.video_mixer.scan_inputs(video), self.text_mixer.scan_inputs(texts)
        repeat = len(questions)

        def joined(video_part: torch.Tensor, text_part: torch.Tensor) -> torch.Tensor:
            return torch.cat([video_part.repeat(repeat, 1, 1), text_part], dim=-1)

        delta = joined(self.video_mixer.delta_with_bias(sv), self.text_mixer.delta_with_bias(st))
        y = selective_scan(joined(sv.u, st.u), delta, A, joined(sv.B, st.B), joined(sv.C, st.C), backend=backend)
        y_video = self.video_mixer.gated_output(y[:b, :, :num_frames], sv)
        y_text = self.text_mixer.gated_output(y[:, :, num_frames:], st)
        return y_video, [chunk[:, :length] for chunk, length in zip(y_text.split(b), lengths, strict=True)]

    def questions_from_state(self, questions: Sequence[torch.Tensor], ssm_state: torch.Tensor) -> list[torch.Tensor]:
        """The question part of a joint scan, read from a video state without changing it (streaming).

        Args:
            questions: sequences ``(b, L_i, hidden_size)`` of (normed) question tokens, right-padded.
            ssm_state: ``(b, d_inner, N)`` the video's scan state after its last token.

        Returns:
            ``[y_question_i (b, L_i, hidden_size)]``, as :meth:`forward` with ``fusion_scan="joint"`` gives them
            after a video whose scan ended in ``ssm_state``.
        """
        b, lengths = questions[0].shape[0], [q.shape[1] for q in questions]
        longest = max(lengths)
        texts = torch.cat([F.pad(q, (0, 0, 0, longest - q.shape[1])) for q in questions])
        st = self.text_mixer.scan_inputs(texts)
        y = selective_scan(
            st.u, self.text_mixer.delta_with_bias(st), self.A, st.B, st.C, backend=self.config.ssm_backend,
            initial_state=ssm_state.repeat(len(questions), 1, 1),
        )  # fmt: skip
        y_text = self.text_mixer.gated_output(y, st)
        return [chunk[:, :length] for chunk, length in zip(y_text.split(b), lengths, strict=True)]


class MambaFusionLayer(GradientCheckpointingLayer):
    """One pre-norm residual SSM-Fusion block: ``x^m <- x^m + SSMFusion(RMSNorm_m(x^m))`` for each modality ``m``.

    Args:
        config: a :class:`~mambavl.MambaVLConfig`.
    """

    def __init__(self, config: MambaVLConfig):
        super().__init__()
        self.video_norm = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.text_norm = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.fusion = SSMFusion(config)

    def forward(
        self, video: torch.Tensor, verb_question: torch.Tensor, noun_question: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fuse ``video (B, F, D)`` with ``verb_question (B, Lv, D)`` and ``noun_question (B, Ln, D)``."""
        y_video, (y_verb, y_noun) = self.fusion(
            self.video_norm(video), [self.text_norm(verb_question), self.text_norm(noun_question)]
        )
        return video + y_video, verb_question + y_verb, noun_question + y_noun

    def step(
        self,
        video: torch.Tensor,
        questions: Sequence[torch.Tensor] | None,
        conv_state: torch.Tensor | None,
        ssm_state: torch.Tensor | None,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None, torch.Tensor, torch.Tensor]:
        """One chunk of a stream through this layer.

        Args:
            video: ``(b, l, D)`` the chunk's video tokens (any ``l >= 1``).
            questions: question tokens ``(b, L_i, D)`` to fuse, or ``None`` to skip them (``"separate"`` scans
                fuse them once per stream). With ``"joint"`` scans they read the video state after this chunk.
            conv_state: ``(b, d_inner, conv_kernel - 1)`` the video mixer's convolution state (``None``: zeros).
            ssm_state: ``(b, d_inner, N)`` the video mixer's scan state (``None``: zeros).

        Returns:
            ``(video (b, l, D), questions or None, conv_state, ssm_state)``, the states after this chunk.
        """
        fusion = self.fusion
        A, backend = fusion.A, fusion.config.ssm_backend
        y_video, conv_state, ssm_state = fusion.video_mixer(
            self.video_norm(video), A, backend, conv_state, ssm_state, return_state=True
        )
        if questions is not None:
            normed = [self.text_norm(q) for q in questions]
            if fusion.config.fusion_scan == "separate":
                ys = [fusion.text_mixer(q, A, backend) for q in normed]
            else:
                ys = fusion.questions_from_state(normed, ssm_state)
            questions = [q + y for q, y in zip(questions, ys, strict=True)]
        return video + y_video, questions, conv_state, ssm_state


class MambaFusion(nn.Module):
    """The paper's fusion (``fusion_type="mamba"``): ``num_fusion_layers`` :class:`MambaFusionLayer` blocks, final
    RMS norms, masked mean pooling, and ``x_verb = pool(y^V) + pool(y^T_verb)``,
    ``x_noun = pool(y^V) + pool(y^T_noun)``.

    Args:
        config: a :class:`~mambavl.MambaVLConfig`.
    """

    def __init__(self, config: MambaVLConfig):
        super().__init__()
        self.config = config  # pool_window is read from it at each call
        self.layers = nn.ModuleList(MambaFusionLayer(config) for _ in range(config.num_fusion_layers))
        self.video_norm = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.text_norm = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(
        self,
        video: torch.Tensor,
        verb_question: torch.Tensor,
        noun_question: torch.Tensor,
        verb_attention_mask: torch.Tensor | None = None,
        noun_attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        cache_params: MambaVLCache | None = None,
    ) -> FusionOutput:
        """Fuse video tokens ``(B, F, D)`` with right-padded question tokens ``(B, Lv, D)`` and ``(B, Ln, D)``
        (masks ``(B, Lv)``, ``(B, Ln)``) and pool them into the heads' features (the video over its last
        ``config.pool_window`` tokens when set).

        With ``cache_params`` (a :class:`~mambavl.MambaVLCache`, updated in place) the video tokens are the next
        chunk of a stream: each layer continues from the cached states and pooling covers every token seen (or
        the last ``pool_window``). The questions are needed at the stream's first call only (pass ``None`` later:
        the cache holds them)."""
        if cache_params is not None:
            return self._forward_with_cache(
                video, verb_question, noun_question, verb_attention_mask, noun_attention_mask, output_hidden_states,
                cache_params,
            )  # fmt: skip
        all_video = [video] if output_hidden_states else None
        for layer in self.layers:
            video, verb_question, noun_question = layer(video, verb_question, noun_question)
            if all_video is not None:
                all_video.append(video)
        video = self.video_norm(video)
        verb_question, noun_question = self.text_norm(verb_question), self.text_norm(noun_question)
        return fusion_output_from_tokens(
            video, verb_question, noun_question, verb_attention_mask, noun_attention_mask, all_video,
            pool_window=self.config.pool_window,
        )  # fmt: skip

    def _forward_with_cache(
        self,
        video: torch.Tensor,
        verb_question: torch.Tensor | None,
        noun_question: torch.Tensor | None,
        verb_attention_mask: torch.Tensor | None,
        noun_attention_mask: torch.Tensor | None,
        output_hidden_states: bool,
        cache: MambaVLCache,
    ) -> FusionOutput:
        if video.shape[0] != cache.batch_size:
            raise ValueError(
                f"The video has batch size {video.shape[0]}, but `cache_params` holds {cache.batch_size} stream(s) "
                "(one per batch row, all advancing together): pass that many videos, or a new cache."
            )
        if video.shape[1] < 1:
            raise ValueError("A streaming call needs at least one new video token, got an empty chunk (0 tokens).")
        first = not cache.has_questions
        separate = cache.fusion_scan == "separate"
        if first:
            if verb_question is None or noun_question is None:
                raise ValueError("The first call of a stream needs the verb and noun questions.")
            questions = [verb_question, noun_question]
            if not separate:  # joint scans re-read the encoded questions at every call
                cache.set_questions(verb_question, noun_question, verb_attention_mask, noun_attention_mask)
        else:
            questions = None if separate else [cache.verb_question, cache.noun_question]
        all_video = [video] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            video, questions, cache.conv_states[i], cache.ssm_states[i] = layer.step(
                video, questions, cache.conv_states[i], cache.ssm_states[i]
            )
            if all_video is not None:
                all_video.append(video)
        video = self.video_norm(video)
        if questions is not None:
            verb_question, noun_question = (self.text_norm(q) for q in questions)
            if separate:  # fused once per stream
                cache.set_questions(verb_question, noun_question, verb_attention_mask, noun_attention_mask)
        else:
            verb_question, noun_question = cache.verb_question, cache.noun_question
        pooled_video = cache.update_pool(video)
        return fusion_output_from_tokens(
            video, verb_question, noun_question, cache.verb_attention_mask, cache.noun_attention_mask, all_video,
            pooled_video=pooled_video,
        )  # fmt: skip


def init_mixer_weights(mixer: SelectiveMixer, config: MambaVLConfig) -> None:
    """Mamba's initialisation of a mixer: PyTorch defaults for the projections and the convolution, ``D = 1``, and
    a ``dt_proj`` bias with ``softplus(bias)`` log-uniform in ``[time_step_min, time_step_max]``."""
    from transformers import initialization as init

    for module in (mixer.in_proj, mixer.x_proj, mixer.out_proj, mixer.conv1d):
        init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            init.zeros_(module.bias)
    std = config.time_step_rank**-0.5 * config.time_step_scale
    if config.time_step_init_scheme == "constant":
        init.constant_(mixer.dt_proj.weight, std)
    else:
        init.uniform_(mixer.dt_proj.weight, -std, std)
    log_min, log_max = math.log(config.time_step_min), math.log(config.time_step_max)
    dt = torch.exp(torch.rand(mixer.d_inner) * (log_max - log_min) + log_min).clamp(min=config.time_step_floor)
    init.copy_(mixer.dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
    init.ones_(mixer.D)


def s4d_real_A_log(d_inner: int, state_size: int) -> torch.Tensor:
    """S4D-real initialisation of ``A_log``, ``(d_inner, state_size)``: ``A = -exp(A_log)``, ``A[:, n] = -(n + 1)``."""
    return torch.log(torch.arange(1, state_size + 1, dtype=torch.float32)).repeat(d_inner, 1)


def init_fusion_weights(fusion: SSMFusion) -> None:
    """S4D-real initialisation of the shared ``A_log`` (:func:`s4d_real_A_log`)."""
    from transformers import initialization as init

    init.copy_(fusion.A_log, s4d_real_A_log(*fusion.A_log.shape))
