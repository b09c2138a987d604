"""Parameter names of Wan2.1 T2V in Wan's native release and in diffusers, mapped both ways.

Every parameter of the model appears in exactly one row; a key that matches no row is an error.
Native names are those of the official Wan2.1 repository (`WanModel`); diffusers names are those of
`diffusers.WanTransformer3DModel`. Wan calls its cross-attention LayerNorm `norm3`, diffusers
`norm2` (native norm1/norm2 and diffusers norm1/norm3 have no parameters).
"""

import re

# (native pattern, diffusers pattern); "{i}" is the block index.
_BLOCK_ROWS = [
    *[(f"self_attn.{n}.{p}", f"attn1.{d}.{p}") for n, d in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))
      for p in ("weight", "bias")],
    ("self_attn.norm_q.weight", "attn1.norm_q.weight"),
    ("self_attn.norm_k.weight", "attn1.norm_k.weight"),
    *[(f"cross_attn.{n}.{p}", f"attn2.{d}.{p}") for n, d in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))
      for p in ("weight", "bias")],
    ("cross_attn.norm_q.weight", "attn2.norm_q.weight"),
    ("cross_attn.norm_k.weight", "attn2.norm_k.weight"),
    ("norm3.weight", "norm2.weight"),
    ("norm3.bias", "norm2.bias"),
    ("ffn.0.weight", "ffn.net.0.proj.weight"),
    ("ffn.0.bias", "ffn.net.0.proj.bias"),
    ("ffn.2.weight", "ffn.net.2.weight"),
    ("ffn.2.bias", "ffn.net.2.bias"),
    ("modulation", "scale_shift_table"),
]

_GLOBAL_ROWS = [
    ("patch_embedding.weight", "patch_embedding.weight"),
    ("patch_embedding.bias", "patch_embedding.bias"),
    *[(f"text_embedding.{i}.{p}", f"condition_embedder.text_embedder.linear_{j}.{p}")
      for i, j in ((0, 1), (2, 2)) for p in ("weight", "bias")],
    *[(f"time_embedding.{i}.{p}", f"condition_embedder.time_embedder.linear_{j}.{p}")
      for i, j in ((0, 1), (2, 2)) for p in ("weight", "bias")],
    ("time_projection.1.weight", "condition_embedder.time_proj.weight"),
    ("time_projection.1.bias", "condition_embedder.time_proj.bias"),
    ("head.head.weight", "proj_out.weight"),
    ("head.head.bias", "proj_out.bias"),
    ("head.modulation", "scale_shift_table"),
]

_SHOWN_KEYS = 8  # an error lists this many of the unknown keys
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")
_NATIVE_TO_DIFFUSERS_BLOCK = dict(_BLOCK_ROWS)
_DIFFUSERS_TO_NATIVE_BLOCK = {d: n for n, d in _BLOCK_ROWS}
_NATIVE_TO_DIFFUSERS = dict(_GLOBAL_ROWS)
_DIFFUSERS_TO_NATIVE = {d: n for n, d in _GLOBAL_ROWS}


class UnknownKeyError(KeyError):
    """Keys that no mapping row covers."""

    def __str__(self):  # the message, not KeyError's repr of it
        return str(self.args[0]) if self.args else ""


def _rename(key, global_rows, block_rows):
    if key in global_rows:
        return global_rows[key]
    match = _BLOCK_KEY.fullmatch(key)
    if match and match.group(2) in block_rows:
        return f"blocks.{match.group(1)}.{block_rows[match.group(2)]}"
    return None


def _rename_all(keys, global_rows, block_rows, source):
    out, unknown = {}, []
    for key in keys:
        new = _rename(key, global_rows, block_rows)
        if new is None:
            unknown.append(key)
        else:
            out[key] = new
    if unknown:
        shown = sorted(unknown)[:_SHOWN_KEYS] + (["..."] if len(unknown) > _SHOWN_KEYS else [])
        raise UnknownKeyError(f"{len(unknown)} {source} key(s) match no Wan2.1 T2V parameter: {', '.join(shown)}")
    return out


def native_to_diffusers(keys):
    """{native key: diffusers key} for ``keys``; raises UnknownKeyError listing keys it cannot map."""
    return _rename_all(keys, _NATIVE_TO_DIFFUSERS, _NATIVE_TO_DIFFUSERS_BLOCK, "native Wan")


def diffusers_to_native(keys):
    """{diffusers key: native key} for ``keys``; raises UnknownKeyError listing keys it cannot map."""
    return _rename_all(keys, _DIFFUSERS_TO_NATIVE, _DIFFUSERS_TO_NATIVE_BLOCK, "diffusers")


def are_diffusers_names(keys):
    """Whether ``keys`` are all diffusers names of Wan2.1 T2V parameters."""
    return bool(keys) and all(_rename(k, _DIFFUSERS_TO_NATIVE, _DIFFUSERS_TO_NATIVE_BLOCK) for k in keys)
