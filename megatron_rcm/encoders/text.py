"""The T5-family text encoders of the diffusers pipelines (UMT5 for Wan2.1, T5 for Cosmos-Predict2),
encoding prompts as the pipelines' ``encode_prompt`` does."""

import torch

from .folder import check_pipeline_folder, pipeline_kind


class TextEncoder:
    """Prompts -> [B, max_length, text_dim] embeddings, exactly the pipeline's ``encode_prompt``
    (``WanPipeline``'s, ``Cosmos2TextToImagePipeline``'s): with ``clean_prompts`` diffusers' prompt
    cleaning first (ftfy when installed, HTML unescaping, whitespace; Wan cleans, Cosmos does not),
    tokenisation padded and truncated to ``max_length`` with the end-of-sequence token, the encoder
    under the attention mask, and the positions past each prompt's tokens set to zero."""

    def __init__(self, tokenizer, text_encoder, max_length: int = 512, clean_prompts: bool = True):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_length = max_length
        self.clean_prompts = clean_prompts
        self.text_dim = text_encoder.config.d_model

    def clean(self, prompts) -> list:
        if not self.clean_prompts:
            return list(prompts)
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


def load_text_encoder(pipeline_dir, dtype=torch.float32, device="cpu", max_length=512) -> TextEncoder:
    """The ``text_encoder/`` and ``tokenizer/`` of a diffusers pipeline folder, encoding as that
    kind of pipeline does (``pipeline_kind``: UMT5 for a Wan2.1 folder, T5 for a Cosmos-Predict2 one)."""
    import transformers

    folder = check_pipeline_folder(pipeline_dir, ["tokenizer", "text_encoder"])
    kind = pipeline_kind(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer")
    encoder_class = getattr(transformers, kind.text_encoder_class)
    encoder = encoder_class.from_pretrained(folder / "text_encoder", dtype=dtype).to(device).eval()
    return TextEncoder(tokenizer, encoder, max_length, clean_prompts=kind.clean_prompts)
