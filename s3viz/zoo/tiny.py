"""A tiny wav2vec2/HuBERT-shaped upstream, with weights trained on the embedded corpus.

``tiny(pretrained=True)`` loads the shipped ``s3viz/zoo/tiny.pt`` (``MODEL_CARD.md``);
``tiny(pretrained=False)`` is the same architecture with seeded random weights.
:class:`TinyConfig` holds the sizes; the architecture: ``docs/zoo.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._cache import file_sha256
from .._fs import OwnedFolder
from ..align import WAV2VEC2_CONV_LAYERS, conv_lengths
from ..interface import check_wavs
from ..models import length_mask
from ..upstreams._common import FixedUpstream
from ..upstreams._hub import AS_GIVEN

__all__ = ["WEIGHTS_PATH", "TinyConfig", "TinyUpstream", "file_sha256", "load_tiny_weights",
           "save_tiny_weights", "tiny"]

WEIGHTS_PATH = Path(__file__).with_name("tiny.pt")
"""The shipped weights (a dict with ``format``, ``config`` and ``state_dict``)."""

_FORMAT = "s3viz.zoo.tiny/1"


@dataclass
class TinyConfig:
    """Sizes of :class:`TinyUpstream` (the defaults are the shipped model's; ``docs/zoo.md``).

    Attributes:
        conv_channels, num_layers, num_heads, ffn_size: channels of each front-end
            convolution; transformer layers; attention heads; feed-forward size.
        pos_conv_kernel, pos_conv_groups: kernel size (odd) and groups of the
            convolutional position embedding.
        layer_norm_first: pre-LN layers with a final layer norm; False: post-LN layers
            after a layer norm of the input.
    """

    conv_channels: int = 64
    conv_layers: tuple[tuple[int, int], ...] = field(
        default_factory=lambda: tuple(WAV2VEC2_CONV_LAYERS))
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    ffn_size: int = 512
    pos_conv_kernel: int = 31
    pos_conv_groups: int = 16
    dropout: float = 0.1
    layer_norm_first: bool = True

    def __post_init__(self):
        self.conv_layers = tuple((int(k), int(s)) for k, s in self.conv_layers)
        for name in ("num_heads", "pos_conv_groups"):
            if self.hidden_size % getattr(self, name):
                raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by "
                                 f"{name} ({getattr(self, name)})")
        if self.pos_conv_kernel % 2 != 1:
            raise ValueError(f"pos_conv_kernel must be odd, got {self.pos_conv_kernel}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["conv_layers"] = [list(p) for p in self.conv_layers]
        return d


class _ConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, stride, bias=False)
        self.norm = nn.LayerNorm(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch_size, channels, time); the norm is per frame, over channels.
        x = self.conv(x)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x)


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, t, h))


class _TransformerLayer(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        h = cfg.hidden_size
        self.norm1 = nn.LayerNorm(h)
        self.attn = _SelfAttention(h, cfg.num_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(h)
        self.ffn = nn.Sequential(nn.Linear(h, cfg.ffn_size), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.ffn_size, h))
        self.drop = nn.Dropout(cfg.dropout)
        self.norm_first = cfg.layer_norm_first

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.drop(self.attn(self.norm1(x), attn_mask))
            return x + self.drop(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, attn_mask)))
        return self.norm2(x + self.drop(self.ffn(x)))


class TinyUpstream(FixedUpstream):
    """The tiny wav2vec2/HuBERT-shaped upstream (``docs/zoo.md``; build it with :func:`tiny`):
    ``num_layers + 1`` hidden states of ``hidden_size`` at 320 samples per frame, each
    frame behind 400 samples. The training script masks frames between the two halves
    :meth:`features` and :meth:`encode`."""

    def __init__(self, config: TinyConfig | None = None, *, name: str = "tiny"):
        super().__init__()
        self.config = cfg = config if config is not None else TinyConfig()
        self.name = name
        self.weights = AS_GIVEN  # tiny() says which weights
        blocks, in_ch = [], 1
        for k, s in cfg.conv_layers:
            blocks.append(_ConvBlock(in_ch, cfg.conv_channels, k, s))
            in_ch = cfg.conv_channels
        self.conv = nn.ModuleList(blocks)
        self.proj_norm = nn.LayerNorm(cfg.conv_channels)
        self.proj = nn.Linear(cfg.conv_channels, cfg.hidden_size)
        self.pos_conv = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, cfg.pos_conv_kernel,
                                  padding=cfg.pos_conv_kernel // 2, groups=cfg.pos_conv_groups)
        self.layers = nn.ModuleList(_TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size)
        self.drop = nn.Dropout(cfg.dropout)
        self._behind_convolutions(cfg.conv_layers, cfg.num_layers + 1, cfg.hidden_size)
        self.conv_layers, self._rf = list(self.conv_layers), self._fields[0]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise weights (uses the global torch RNG; :func:`tiny` seeds it locally)."""
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        std = math.sqrt(4.0 / (self.config.pos_conv_kernel * self.config.hidden_size))
        nn.init.normal_(self.pos_conv.weight, 0.0, std)
        nn.init.zeros_(self.pos_conv.bias)

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"name={self.name!r}, params={n}"

    def features(self, wavs: torch.Tensor, wavs_len: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The front end, hidden state 0: ``(x, x_len)``, ``(batch_size, num_frames,
        hidden_size)`` with padded frames zero and the frame counts (``conv_lengths``)."""
        wavs, wavs_len = check_wavs(wavs, wavs_len, who=f"{self.name} upstream")
        x_len = conv_lengths(wavs_len.cpu(), self.config.conv_layers).to(wavs.device)
        max_len = int(wavs_len.max()) if len(wavs_len) else 0
        wavs = wavs[:, :max(max_len, self._rf)]
        if wavs.shape[1] < self._rf:  # too short for one frame: compute on zeros, keep 0 frames
            wavs = F.pad(wavs, (0, self._rf - wavs.shape[1]))
        dtype = self.proj.weight.dtype
        wavs = wavs.to(dtype)
        # per-utterance normalisation over valid samples only
        valid = length_mask(wavs_len, wavs.shape[1]).to(dtype)
        n = wavs_len.clamp(min=1).to(dtype)[:, None]
        mean = (wavs * valid).sum(1, keepdim=True) / n
        var = (((wavs - mean) * valid) ** 2).sum(1, keepdim=True) / n
        wavs = (wavs - mean) / torch.sqrt(var + 1e-5) * valid
        h = wavs[:, None, :]
        for block in self.conv:
            h = block(h)
        h = h.transpose(1, 2)  # (batch_size, frames, channels)
        num_frames = int(x_len.max()) if len(x_len) else 0
        h = h[:, :num_frames]
        x = self.proj(self.proj_norm(h))
        x = x * length_mask(x_len, num_frames)[..., None].to(x.dtype)
        return x, x_len

    def encode(self, x: torch.Tensor, x_len: torch.Tensor) -> list[torch.Tensor]:
        """The transformer on front-end features ``x`` (possibly masked by the training
        objective): the ``num_layers`` hidden states after it, padded frames zero."""
        if x.shape[1] == 0:  # no utterance long enough for one frame
            return [x.clone() for _ in self.layers]
        valid = length_mask(x_len, x.shape[1])
        keep = valid[..., None].to(x.dtype)
        x = x * keep
        x = x + F.gelu(self.pos_conv(x.transpose(1, 2))).transpose(1, 2) * keep
        pre_ln = self.config.layer_norm_first
        if not pre_ln:  # post-LN (wav2vec2 base): normalise the input, not the output
            x = self.final_norm(x)
        x = self.drop(x)
        # key-padding mask; an utterance with no frame attends to everything (zeroed later)
        keys = valid | (x_len == 0)[:, None]
        attn_mask = keys[:, None, None, :]
        out = []
        for i, layer in enumerate(self.layers):
            x = layer(x, attn_mask)
            h = self.final_norm(x) if pre_ln and i == len(self.layers) - 1 else x
            out.append(h * keep)
        return out

    def forward(self, wavs: torch.FloatTensor, wavs_len: torch.LongTensor
                ) -> tuple[list[torch.FloatTensor], list[torch.LongTensor]]:
        """``(all_hs, all_hs_len)``: :meth:`features` then :meth:`encode`, ``num_layer``
        hidden states (padded frames zero) and as many frame counts, all equal."""
        x, x_len = self.features(wavs, wavs_len)
        all_hs = [x] + self.encode(x, x_len)
        return all_hs, [x_len.clone() for _ in all_hs]


# ---- weights ---------------------------------------------------------------------------

def save_tiny_weights(model: TinyUpstream, path: str | Path, *,
                      dtype: torch.dtype = torch.float16, meta: dict | None = None) -> str:
    """Save ``model``'s weights (floating tensors as ``dtype``) and ``meta`` (str/int/float
    values) for :func:`load_tiny_weights`; returns the file's sha256."""
    state = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    payload = {"format": _FORMAT, "config": model.config.to_dict(), "state_dict": state,
               "meta": dict(meta or {})}
    path = Path(path).expanduser()
    OwnedFolder(path.parent, "the weights folder").write_with(
        path.name, lambda f: torch.save(payload, f))
    return file_sha256(path)


def load_tiny_weights(path: str | Path) -> tuple[TinyConfig, dict, dict]:
    """``(config, state_dict, meta)`` of a weights file (``torch.load(weights_only=True)``),
    tensors float32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"tiny weights not found at {path}; reinstall s3viz, or train them with "
            "`python -m s3viz.zoo.train_tiny --out PATH` and pass checkpoint=PATH"
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not an s3viz tiny weights file (format {_FORMAT!r})")
    config = TinyConfig(**payload["config"])  # its __post_init__ makes conv_layers int pairs
    state = {k: (v.float() if v.is_floating_point() else v)
             for k, v in payload["state_dict"].items()}
    return config, state, dict(payload.get("meta", {}))


def tiny(pretrained: bool = True, *, seed: int = 0,
         checkpoint: str | Path | None = None,
         config: TinyConfig | None = None) -> TinyUpstream:
    """The tiny upstream named ``"tiny"``, in eval mode; its ``weights`` says which it has.

    Args:
        pretrained: load the shipped weights (``s3viz/zoo/tiny.pt``, ``MODEL_CARD.md``);
            False: the same architecture with random weights drawn from ``seed`` (the
            global RNG is left untouched).
        checkpoint: another weights file (``python -m s3viz.zoo.train_tiny --out PATH``)
            instead of the shipped one.
        config: the architecture of a random model (default: the shipped model's).
    """
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True or False, got {pretrained!r}")
    if checkpoint is not None and not pretrained:
        raise ValueError("tiny: checkpoint= gives weights and pretrained=False asks for random "
                         "ones; pass one of them")
    if pretrained and config is not None:
        raise ValueError("config= is only for pretrained=False; weights files carry "
                         "their own config")
    state = None
    if pretrained:
        config, state, _ = load_tiny_weights(WEIGHTS_PATH if checkpoint is None else checkpoint)
    elif config is None:  # the shipped model's architecture (TinyConfig() without the file)
        config = load_tiny_weights(WEIGHTS_PATH)[0] if WEIGHTS_PATH.is_file() else TinyConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyUpstream(config, name="tiny")
    if state is None:
        model.weights = f"random weights (seed {seed})"
    else:
        model.load_state_dict(state)
        model.weights = ("pretrained: the shipped tiny model (s3viz/zoo/tiny.pt)"
                         if checkpoint is None else f"checkpoint {Path(checkpoint).resolve()}")
    return model.eval()

