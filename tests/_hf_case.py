"""Small random-weight Hugging Face models the transformers and attention tests share."""

from __future__ import annotations

import torch


def tiny_whisper():
    """A 2-layer Whisper (d_model 32, 2 heads) with a 5 s window (250 encoder frames)."""
    import transformers as T

    config = T.WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1,
                             encoder_attention_heads=2, decoder_attention_heads=2,
                             encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                             max_source_positions=250, vocab_size=64, max_target_positions=16,
                             pad_token_id=1, bos_token_id=0, eos_token_id=2,
                             decoder_start_token_id=0)
    torch.manual_seed(0)
    return T.WhisperModel(config).eval()
