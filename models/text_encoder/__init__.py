"""Text encoders: the frozen T5 v1.1 encoder and the caption cleaning applied before it."""
from .caption_cleaning import CaptionCleaningWarning, NonLatinCaptionWarning, clean_caption, text_preprocessing
from .t5 import T5Encoder, load_t5_encoder_model

__all__ = [
    "T5Encoder",
    "load_t5_encoder_model",
    "clean_caption",
    "text_preprocessing",
    "CaptionCleaningWarning",
    "NonLatinCaptionWarning",
]
