"""Exact parameter counts, training FLOPs and Chinchilla-optimal tokens for decoder-only transformers.

The count is a function of a few shape options (MLP kind, norm kind, biases, tied head, position
embedding) so one formula covers the project's GPT and Llama-shaped models; published sizes (Llama-2-7B
6.74B, GPT-3 175B) are the tests that the formula is right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from spec.config import ModelConfig

CHINCHILLA_TOKENS_PER_PARAM = 20.0
"""Hoffmann et al. 2022 ("Training Compute-Optimal LLMs"): compute-optimal D is about 20 tokens per parameter."""


@dataclass(frozen=True)
class ModelShape:
    """Everything the arithmetic needs about a decoder-only transformer.

    Defaults describe the project's GPT (``model.arch: gpt``): learned position embedding, LayerNorm with
    bias, biased linear layers, a GELU MLP with two matrices, and a separate bias-free output head
    (as ``trainer/model.py`` builds it).
    """

    vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    ffn: int
    seq_len: int
    kv_heads: int | None = None
    mlp: Literal["gelu", "swiglu"] = "gelu"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    bias: bool = True
    tied_head: bool = False
    position: Literal["learned", "none"] = "learned"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.n_heads


def shape_from_config(model: ModelConfig) -> ModelShape:
    """The run.yaml model section as a shape (the GPT defaults of :class:`ModelShape`)."""
    return ModelShape(vocab=model.vocab_size, d_model=model.d_model, n_layers=model.n_layers,
                      n_heads=model.n_heads, ffn=model.ffn, seq_len=model.seq_len)


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _norm(shape: ModelShape) -> int:
    """LayerNorm has a gain and a bias; RMSNorm only a gain."""
    return 2 * shape.d_model if shape.norm == "layernorm" else shape.d_model


def layer_params(shape: ModelShape) -> int:
    """One transformer block: two norms, attention (q, k, v, out) and the MLP."""
    d, b = shape.d_model, shape.bias
    kv = shape.n_kv_heads * shape.head_dim
    attn = _linear(d, d + 2 * kv, b) + _linear(d, d, b)
    if shape.mlp == "swiglu":
        mlp = 2 * _linear(d, shape.ffn, b) + _linear(shape.ffn, d, b)
    else:
        mlp = _linear(d, shape.ffn, b) + _linear(shape.ffn, d, b)
    return attn + mlp + 2 * _norm(shape)


def embedding_params(shape: ModelShape) -> int:
    """Token embedding plus the learned position embedding, if any."""
    pos = shape.seq_len * shape.d_model if shape.position == "learned" else 0
    return shape.vocab * shape.d_model + pos


def head_params(shape: ModelShape) -> int:
    """Final norm plus the output projection (zero extra weights when tied to the embedding)."""
    return _norm(shape) + (0 if shape.tied_head else shape.vocab * shape.d_model)


def count_params(shape: ModelShape) -> int:
    """Exact number of trainable parameters (a tied head is counted once)."""
    return embedding_params(shape) + shape.n_layers * layer_params(shape) + head_params(shape)


def non_embedding_params(shape: ModelShape) -> int:
    """Parameters outside the embeddings (Kaplan et al. 2020's N); an untied head counts as embedding."""
    return shape.n_layers * layer_params(shape) + _norm(shape)


def stage_params(shape: ModelShape, pp: int, stage: int) -> int:
    """Parameters held by one pipeline stage (layers split evenly).

    The first stage holds the embeddings, the last the final norm and head; with a tied head and pp > 1
    the last stage keeps its own copy of the embedding matrix (as Megatron-LM does), so it is counted there.
    """
    n = (shape.n_layers // pp) * layer_params(shape)
    if stage == 0:
        n += embedding_params(shape)
    if stage == pp - 1:
        n += head_params(shape)
        if shape.tied_head and pp > 1:
            n += shape.vocab * shape.d_model
    return n


def attention_flops_per_token(shape: ModelShape) -> float:
    """Attention score/value matmuls, forward+backward, per token: 12 * layers * d_model * seq_len.

    This is the convention of PaLM (Chowdhery et al. 2022, Appendix B) used for MFU; it counts the full
    (non-causal) score matrix, so it is an upper bound for causal attention.
    """
    return 12.0 * shape.n_layers * shape.d_model * shape.seq_len


def six_nd(n_params: float, tokens: float) -> float:
    """2 FLOPs per parameter per token forward, 4 backward (Kaplan et al. 2020; Hoffmann et al. 2022)."""
    return 6.0 * n_params * tokens


def training_flops(shape: ModelShape, tokens: float) -> dict[str, float]:
    """Training FLOPs: the 6*N*D rule and 6*N*D plus attention (PaLM, App. B); no recompute counted."""
    six = six_nd(count_params(shape), tokens)
    return {"six_nd": six, "with_attention": six + attention_flops_per_token(shape) * tokens}


def chinchilla_tokens(n_params: float) -> float:
    """Compute-optimal training tokens for a model of n_params parameters (about 20 per parameter)."""
    return CHINCHILLA_TOKENS_PER_PARAM * n_params
