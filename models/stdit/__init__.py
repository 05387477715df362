"""STDiT video diffusion transformers (Open-Sora 1.1 STDiT2, Open-Sora 1.2 STDiT3) and presets."""
from .stdit2 import STDiT2, STDiT2_XL_2
from .stdit3 import STDiT3, STDiT3_3B_2, STDiT3_XL_2

MODEL_CLASSES = {"STDiT2": STDiT2, "STDiT3": STDiT3}
PRESETS = {"STDiT2-XL/2": STDiT2_XL_2, "STDiT3-XL/2": STDiT3_XL_2, "STDiT3-3B/2": STDiT3_3B_2}


def build_model(name, **kwargs):
    """Build a model by class name ("STDiT2", "STDiT3") or preset ("STDiT2-XL/2", "STDiT3-XL/2",
    "STDiT3-3B/2"); kwargs are upstream config keywords. Raises ValueError for an unknown name."""
    if name in PRESETS:
        return PRESETS[name](**kwargs)
    if name in MODEL_CLASSES:
        return MODEL_CLASSES[name].from_config(kwargs)
    raise ValueError(f"unknown model {name!r}; accepted: {sorted(MODEL_CLASSES) + sorted(PRESETS)}")


__all__ = ["STDiT2", "STDiT3", "STDiT2_XL_2", "STDiT3_XL_2", "STDiT3_3B_2", "MODEL_CLASSES", "PRESETS", "build_model"]
