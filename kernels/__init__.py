"""Triton attention kernels (forward + JVP), imported as megatron_rcm.kernels.

With the repository root on sys.path this folder is also visible as a top-level ``kernels``
package, a name other libraries probe for (transformers imports ``kernels`` when it looks for
the Hugging Face kernel hub). Under that name the package stays empty: loading the code twice
would register the attention custom op twice, and the second registration frees the first one
while ``megatron_rcm.kernels`` still calls it.
"""

if __name__ == "megatron_rcm.kernels":
    from .attention import attention
    from .flash_jvp import AttentionJVPOutput, flash_attention_jvp
    from .merge import merge_attention_jvp

    __all__ = ["AttentionJVPOutput", "attention", "flash_attention_jvp", "merge_attention_jvp"]
