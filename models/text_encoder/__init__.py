"""Text encoders: the frozen T5 v1.1 encoder (with the caption cleaning applied before it) and the
frozen MiniLM-L6 sentence encoder used by the small default model."""
from .caption_cleaning import CaptionCleaningWarning, NonLatinCaptionWarning, clean_caption, text_preprocessing
from .minilm import MiniLMEncoder, add_local_context
from .t5 import T5Encoder, load_t5_encoder_model

__all__ = [
    "T5Encoder",
    "MiniLMEncoder",
    "add_local_context",
    "load_t5_encoder_model",
    "clean_caption",
    "text_preprocessing",
    "CaptionCleaningWarning",
    "NonLatinCaptionWarning",
]
