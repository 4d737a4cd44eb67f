"""Foreign models (timm, torchvision, Hugging Face, any ``nn.Module``) under the block contract.

    model = vitscope.load_foreign("timm", "deit_tiny_patch16_224", weights="deit.safetensors",
                                  model_kwargs={"num_classes": 10}, img_size=32)
    vitscope.blocks(model)          # the units, from the curated rule for timm's ViT

:func:`describe` lists any model's units (a spec, a curated rule or the generic
decomposition, with stages from the shapes); :class:`ForeignModel` adapts input and output;
:func:`load_foreign` builds a model by library and name and loads local weights safely.
"""

from .core import ForeignModel, describe, describe_table, guess_input, logits_of, wrap
from .load import SOURCES, load_foreign, load_weights, state_dict_of
from .rules import RULES, Rule, find_rule

__all__ = [
    "RULES",
    "ForeignModel",
    "Rule",
    "SOURCES",
    "describe",
    "describe_table",
    "load_foreign",
    "load_weights",
    "state_dict_of",
    "find_rule",
    "guess_input",
    "logits_of",
    "wrap",
]
