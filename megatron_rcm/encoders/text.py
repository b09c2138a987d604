"""The Wan2.1 text encoder (transformers ``UMT5EncoderModel`` and its tokenizer), as WanPipeline encodes prompts."""

import torch

from .folder import check_pipeline_folder

# Wan2.1's default negative prompt (sample_neg_prompt in its wan/configs/shared_config.py).
WAN_NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                       "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
                       "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")


class WanTextEncoder:
    """Prompts -> [B, max_length, text_dim] embeddings, exactly ``WanPipeline.encode_prompt``:
    diffusers' prompt cleaning (ftfy when installed, HTML unescaping, whitespace), tokenisation
    padded and truncated to ``max_length`` with the end-of-sequence token, the encoder under the
    attention mask, and the positions past each prompt's tokens set to zero."""

    def __init__(self, tokenizer, text_encoder, max_length: int = 512):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_length = max_length
        self.text_dim = text_encoder.config.d_model

    @staticmethod
    def clean(prompts) -> list:
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        return [prompt_clean(p) for p in prompts]

    def num_tokens(self, prompts) -> list:
        """Each prompt's token count (end-of-sequence token included) before truncation."""
        ids = self.tokenizer(self.clean(prompts), add_special_tokens=True).input_ids
        return [len(i) for i in ids]

    @torch.no_grad()
    def encode(self, prompts) -> torch.Tensor:
        tokens = self.tokenizer(self.clean(prompts), padding="max_length", max_length=self.max_length,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        mask = tokens.attention_mask.to(device)
        hidden = self.text_encoder(tokens.input_ids.to(device), mask).last_hidden_state
        return hidden.masked_fill(~mask.bool().unsqueeze(-1), 0.0)


def load_text_encoder(pipeline_dir, dtype=torch.float32, device="cpu", max_length=512) -> WanTextEncoder:
    """The ``text_encoder/`` and ``tokenizer/`` of a diffusers Wan pipeline folder."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    folder = check_pipeline_folder(pipeline_dir, ["tokenizer", "text_encoder"])
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=dtype).to(device).eval()
    return WanTextEncoder(tokenizer, encoder, max_length)
