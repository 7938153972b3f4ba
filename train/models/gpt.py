"""A character-level decoder-only Transformer (Radford et al., "Language Models are
Unsupervised Multitask Learners", 2019; Vaswani et al., "Attention Is All You Need", 2017).
https://arxiv.org/abs/1706.03762

Module paths follow GPT-2: `transformer.wte`, `transformer.wpe`, `transformer.h.{i}.ln_1`,
`.attn.c_attn`, `.attn.c_proj`, `.ln_2`, `.mlp.c_fc`, `.mlp.c_proj`, `transformer.ln_f`.
The output projection `lm_head` is tied to `transformer.wte` and is not exported.

KV cache semantics: the cache holds keys and values of positions 0..T-1 and is exact
while T <= block_size. Once the sequence outgrows the block, every position of the
window shifts, so each further step re-prefills the last block_size tokens: cached and
uncached generation give the same tokens at every length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train.flags import knob

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (B, nh, T, hs) keys, values


@dataclass(frozen=True)
class GPTConfig:
    vocab: str = ""  # the characters; token id = index in this string (set by the data)
    block_size: int = knob(128, "longest context, in tokens")
    n_layer: int = knob(4, "Transformer blocks")
    n_head: int = knob(4, "attention heads per block")
    n_embd: int = knob(128, "residual-stream width")
    dropout: float = knob(0.0, "dropout on attention weights and residual branches")
    pre_ln: bool = knob(True, "LayerNorm before each sublayer (GPT-2); --no-pre-ln puts it after")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __post_init__(self) -> None:
        assert self.n_embd % self.n_head == 0, "n_embd must be divisible by n_head"
        assert len(set(self.vocab)) == len(self.vocab), "vocabulary characters must be unique"


class CausalSelfAttention(nn.Module):
    """softmax(Q K^T / sqrt(d_k) + M) V over n_head heads, M = -inf above the diagonal."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, past: tuple | None) -> tuple[torch.Tensor, tuple]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, nh, P + T, hs)
            v = torch.cat([past[1], v], dim=2)
        P = k.shape[2] - T
        if P == 0:
            mask, causal = None, True
        elif T == 1:
            mask, causal = None, False  # one new token may see every earlier one
        else:
            mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(diagonal=P)
            causal = False
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    """c_proj(GELU(c_fc(x))), 4x wide."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """pre-LN:  x += attn(ln_1(x)); x += mlp(ln_2(x))
    post-LN: x = ln_1(x + attn(x)); x = ln_2(x + mlp(x))"""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)
        self.pre_ln = cfg.pre_ln

    def forward(self, x: torch.Tensor, past: tuple | None) -> tuple[torch.Tensor, tuple]:
        if self.pre_ln:
            a, present = self.attn(self.ln_1(x), past)
            x = x + a
            return x + self.mlp(self.ln_2(x)), present
        a, present = self.attn(x, past)
        x = self.ln_1(x + a)
        return self.ln_2(x + self.mlp(x)), present


class GPT(nn.Module):
    arch = "gpt"
    Config = GPTConfig
    data = "text"

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        assert cfg.vocab_size > 0, "the GPT needs a vocabulary"
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                ln_f=nn.LayerNorm(cfg.n_embd),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied (Press & Wolf, 2017)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None):
        """Logits (B, T, vocab) for tokens idx (B, T) that follow the cached positions."""
        B, T = idx.shape
        start = cache[0][0].shape[2] if cache else 0
        assert start + T <= self.cfg.block_size, f"{start + T} positions > block_size"
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        presents = []
        for i, block in enumerate(self.transformer.h):
            x, present = block(x, cache[i] if cache else None)
            presents.append(present)
        return self.lm_head(self.transformer.ln_f(x)), presents

    # --- generation --------------------------------------------------------------
    def encode(self, text: str) -> torch.Tensor:
        lookup = {c: i for i, c in enumerate(self.cfg.vocab)}
        unknown = sorted(set(text) - lookup.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown!r}")
        return torch.tensor([lookup[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.cfg.vocab[int(i)] for i in ids)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        on_token: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Append max_new_tokens to idx (B, T). temperature 0 is greedy (argmax);
        otherwise sample softmax(logits / temperature) restricted to the top_k.
        `on_token`, if given, gets each step's (B, 1) new ids as they come."""
        cache: KVCache | None = None
        for _ in range(max_new_tokens):
            fits = idx.shape[1] <= self.cfg.block_size
            if use_cache and fits and cache is not None:
                logits, cache = self(idx[:, -1:], cache)
            else:
                window = idx[:, -self.cfg.block_size :]
                logits, cache = self(window)  # prefill, or re-prefill a slid window
                cache = cache if use_cache and fits else None
            next_id = pick_next_token(logits[:, -1, :], temperature, top_k, generator)
            if on_token is not None:
                on_token(next_id)
            idx = torch.cat([idx, next_id], dim=1)
        return idx

    # --- the trainer's interface -------------------------------------------------
    def configure_optimizers(self, lr: float, weight_decay: float) -> dict:
        """AdamW, decaying matrices only (not biases, LayerNorm gains, or positions)."""
        decay = [p for n, p in self.named_parameters() if p.dim() >= 2 and "wpe" not in n]
        rest = [p for n, p in self.named_parameters() if p.dim() < 2 or "wpe" in n]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
        return {"model": torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))}

    @staticmethod
    def recipe(cfg: GPTConfig, train) -> str:
        return f"AdamW {train.describe()}"

    def export_state(self) -> dict[str, torch.Tensor]:
        """Every parameter but `lm_head.weight`, which is tied to `transformer.wte.weight`."""
        return {k: v for k, v in self.state_dict().items() if k != "lm_head.weight"}

    def next_token_loss(self, batch) -> torch.Tensor:
        """Cross-entropy -1/(B T) sum log p(x_{t+1} | x_<=t)."""
        x, y = batch  # (B, T) inputs, (B, T) targets shifted by one
        logits, _ = self(x)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))

    def objectives(self, batch, step: int):
        loss = self.next_token_loss(batch)
        yield "model", loss, {"loss": loss}

    @torch.no_grad()
    def validation(self, batch) -> dict:
        return {"loss": self.next_token_loss(batch)}

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator,
        prompt: str = "\n",
        length: int = 300,
        temperature: float = 0.8,
        top_k: int | None = 20,
    ) -> list[str]:
        """n texts, each the prompt and `length` characters after it, drawn at `temperature`
        from the `top_k` likeliest (temperature 0 is greedy)."""
        idx = self.encode(prompt).repeat(n, 1)
        out = self.generate(idx, length, temperature=temperature, top_k=top_k, generator=generator)
        return [self.decode(row) for row in out]


def pick_next_token(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, vocab) logits -> (B, 1) ids: argmax if temperature == 0, else a top-k sample."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
