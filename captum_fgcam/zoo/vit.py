r"""A small plain vision transformer with a class token, in torchvision's layout, for 96 px scenes.

torchvision's own :class:`~torchvision.models.VisionTransformer` (so that every peer with a
torchvision ViT rule set, LXT's AttnLRP among them, runs on it unchanged): a 8 x 8 patch
embedding (``conv_proj``, 12 x 12 tokens), a learned class token and position embedding, four
pre-norm encoder blocks

    x = x + MSA(LN(x)),  x = x + MLP(LN(x)),

with ``nn.MultiheadAttention`` (4 heads of 24 channels), the final ``encoder.ln``, and a linear
head on the class token only: the patch tokens reach the class through attention alone.
"""

from __future__ import annotations

from torchvision.models import VisionTransformer


def scenes_vit(num_classes: int = 6) -> VisionTransformer:
    """The zoo's plain ViT: 96 px, 8 px patches, 4 blocks of width 96, MLP 192, class token."""
    return VisionTransformer(image_size=96, patch_size=8, num_layers=4, num_heads=4,
                             hidden_dim=96, mlp_dim=192, num_classes=num_classes)
