"""Caption cleaning applied before the T5 encoder.

Follows the intent of upstream Open-Sora v1.1 / v1.2 `opensora/models/text_encoder/t5.py`
(`clean_caption`, `text_preprocessing`, inherited from PixArt-alpha / DeepFloyd IF): repair broken
unicode and HTML entities, URL-decode, lower-case, drop URLs, HTML tags, @handles, IP addresses,
file names, long numbers, product codes and shop phrases, normalise dashes, quotes, punctuation and
whitespace. The same cleaning must be used for training captions and prompts.

Deliberate differences from upstream:
- Non-Latin text is kept. Upstream deleted CJK ideographs, strokes, enclosed letters,
  compatibility symbols and Yijing hexagrams without a word; here they stay and a
  `CaptionCleaningWarning` names the caption (the T5 v1.1 vocabulary is English-centred and maps
  most such characters to `<unk>`, so the user should know).
- URLs are removed whole (`https://youtu.be/x` disappears; upstream removed only `https://` from
  URLs outside a few top-level domains).
- A caption that cleaning empties completely gives a warning as well.
"""
import html
import re
import unicodedata
import urllib.parse
import warnings

import ftfy
from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

__all__ = ["CaptionCleaningWarning", "NonLatinCaptionWarning", "clean_caption", "text_preprocessing"]


class CaptionCleaningWarning(UserWarning):
    """Caption cleaning kept text T5 may not represent, or removed everything."""


class NonLatinCaptionWarning(CaptionCleaningWarning):
    """A caption contains non-Latin text (kept as is)."""


# Blocks upstream deleted outright: CJK strokes, katakana phonetic extensions, enclosed CJK
# letters and months, CJK compatibility, CJK extension A, Yijing hexagrams, CJK unified ideographs.
_UPSTREAM_DELETED_BLOCKS = ((0x31C0, 0x33FF), (0x3400, 0x4DBF), (0x4DC0, 0x4DFF), (0x4E00, 0x9FFF))

_MEDIA_EXT = r"(?:png|jpe?g|bmp|webp|eps|pdf|apk|mp4)"
# Every dash-like code point (hyphen-minus, Armenian, Hebrew, Canadian, Mongolian, the General
# Punctuation dashes, supplemental punctuation, wave dashes, small/fullwidth forms).
_DASHES = (
    "\u002d\u058a\u05be\u1400\u1806\u2010\u2011\u2012\u2013\u2014\u2015\u2e17\u2e1a\u2e3a\u2e3b"
    "\u2e40\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d"
)


def _rule(pattern, replacement):
    return re.compile(pattern), replacement


# Stage 1, after decoding and lower-casing: remove URLs (before HTML parsing sees their slashes).
_URL_RULES = [
    _rule(r"\b(?:https?|ftp)://\S+", ""),  # scheme URLs
    _rule(r"\bwww\.\S+", ""),  # www.example.xyz/...
    _rule(r"\b[\w.-]+\.(?:com|co|ru|net|org|edu|gov|it)\b(?:/[^\s@]*)?", ""),  # bare domains
]

# Stage 2, after HTML tags are stripped: things that are not a description of the picture.
_NOISE_RULES = [
    _rule(r"@\w+\b", ""),  # @nickname
    _rule(r"\d{1,3}(?:\.\d{1,3}){3}", " "),  # IPv4 addresses
    _rule(r"\d:\d\d\s+$", ""),  # trailing article ids
    _rule(r"\\n", " "),  # a literal backslash-n
    _rule(r"#(?:\d{1,3}|\d{5,})\b", ""),  # #12, #123456
    _rule(r"\b\d{6,}\b", ""),  # long numbers
    _rule(r"\S+\." + _MEDIA_EXT, ""),  # file names
]

# Stage 3: punctuation to one standard.
_PUNCT_RULES = [
    _rule("[" + _DASHES + "]+", "-"),
    _rule(r"[`´«»“”¨]", '"'),
    _rule(r"[‘’]", "'"),
    _rule(r"&quot;?|&amp", ""),  # entity leftovers of doubly escaped text
    _rule(r"[\"']{2,}", '"'),
    _rule(r"\.{2,}", " "),
    _rule(r"[#®•©™&@·º½¾¿¡§~()\[\]{}|\\/*]+", " "),
    _rule(r"\s+\.\s+", " "),
]

# Stage 4: shop and download boilerplate, picture sizes.
_BOILERPLATE_RULES = [
    _rule(r"(?:worldwide\s+)?(?:free\s+)?shipping", ""),
    _rule(r"(?:free\s)?download(?:\sfree)?", ""),
    _rule(r"\bclick\b\s(?:for|on)\s\w+", ""),
    _rule(r"\b" + _MEDIA_EXT + r"(?:\simages?)?", ""),
    _rule(r"\bpage\s+\d+\b", ""),
    _rule(r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),  # 1920x1080 (latin x, cyrillic х, ×)
]

# Stage 5: spacing and the ends of the caption.
_SPACING_RULES = [
    _rule(r"\b\s+:\s+", ": "),
    _rule(r"(\D[,./])\b", r"\1 "),
    _rule(r"\s+", " "),
]
_END_RULES = [
    _rule(r"^[\"']([\s\S]+)[\"']$", r"\1"),  # caption wrapped in quotes
    _rule(r"^['_,\-:;]", ""),
    _rule(r"['_,\-:+]$", ""),
    _rule(r"^\.\S+$", ""),  # a lone ".something"
]

_ALNUM_TOKEN = re.compile(r"\b[a-z0-9]+\b")
_LETTER_DIGIT_RUN = re.compile(r"[a-z]+|[0-9]+")
_SHORT_PREFIX_CODE = re.compile(r"[a-z]{1,3}[0-9]{3,15}")
_SEPARATORS = re.compile(r"[-_]")


def _apply(rules, text):
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def _drop_code(match):
    """Drop product / stock codes: 'jc6640', 'jc6640vc', '6640vc231', 'j2d1a2a' (3+ letter/digit runs)."""
    token = match.group(0)
    if _SHORT_PREFIX_CODE.fullmatch(token) or len(_LETTER_DIGIT_RUN.findall(token)) >= 3:
        return ""
    return token


def _strip_html(text):
    with warnings.catch_warnings():
        # bs4 warns when the text looks like a file name or URL; that is expected for captions.
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        return BeautifulSoup(text, features="html.parser").get_text()


def _clean_once(caption):
    text = ftfy.fix_text(caption)  # mojibake, curly quotes, full-width forms
    text = html.unescape(html.unescape(text))
    text = urllib.parse.unquote_plus(text)
    text = text.strip().lower()
    text = text.replace("<person>", "person")
    text = _apply(_URL_RULES, text)
    text = _strip_html(text)
    text = _apply(_NOISE_RULES, text)
    text = _apply(_PUNCT_RULES, text)
    if len(_SEPARATORS.findall(text)) > 3:  # this-is-my-cute-cat / this_is_my_cute_cat
        text = _SEPARATORS.sub(" ", text)
    text = _ALNUM_TOKEN.sub(_drop_code, text)
    text = _apply(_BOILERPLATE_RULES, text)
    text = _apply(_SPACING_RULES, text).strip()
    text = _apply(_END_RULES, text)
    return text.strip()


def _is_non_latin(ch):
    code = ord(ch)
    if any(lo <= code <= hi for lo, hi in _UPSTREAM_DELETED_BLOCKS):
        return True
    return unicodedata.category(ch).startswith("L") and not unicodedata.name(ch, "").startswith("LATIN")


def _warn_about(caption, cleaned, stacklevel):
    non_latin = list(dict.fromkeys(ch for ch in cleaned if _is_non_latin(ch)))  # first-seen order
    if non_latin:
        shown = "".join(non_latin[:20]) + ("..." if len(non_latin) > 20 else "")
        warnings.warn(
            f"caption {caption!r} contains non-Latin characters ({shown}); they are kept (upstream Open-Sora "
            "deleted CJK text here), but the English-centred T5 v1.1 vocabulary maps most of them to <unk>",
            NonLatinCaptionWarning,
            stacklevel=stacklevel,
        )
    if caption.strip() and not cleaned:
        warnings.warn(f"caption {caption!r} is empty after cleaning", CaptionCleaningWarning, stacklevel=stacklevel)


def _check_caption(caption):
    if not isinstance(caption, str):
        raise ValueError(f"a caption must be a str, got {caption!r} of type {type(caption).__name__}")


def clean_caption(caption):
    """Clean one caption (one pass).

    Args:
        caption: the raw caption.

    Returns:
        The cleaned, lower-cased caption (may be empty).

    Warns:
        NonLatinCaptionWarning: the cleaned caption contains non-Latin letters or CJK symbols.
        CaptionCleaningWarning: cleaning removed everything from a non-blank caption.

    Raises:
        ValueError: caption is not a str.
    """
    _check_caption(caption)
    cleaned = _clean_once(caption)
    _warn_about(caption, cleaned, stacklevel=3)  # point at the caller
    return cleaned


def text_preprocessing(texts, use_text_preprocessing=True):
    """Prepare captions for T5 as upstream does at training and sampling time.

    Args:
        texts: one caption (str) or a list / tuple of captions.
        use_text_preprocessing: True = full cleaning, applied twice as upstream does; False = only
            lower-case and strip.

    Returns:
        A str for a str input, otherwise a list of str.

    Warns:
        See `clean_caption` (one warning per caption, not per pass).

    Raises:
        ValueError: texts is not a str or a list / tuple of str.
    """
    if isinstance(texts, str):
        return _preprocess_one(texts, use_text_preprocessing)
    if not isinstance(texts, (list, tuple)):
        raise ValueError(f"texts must be a str or a list of str, got {type(texts).__name__}: {texts!r}")
    cleaned = []
    for text in texts:
        cleaned.append(_preprocess_one(text, use_text_preprocessing))
    return cleaned


def _preprocess_one(text, use_text_preprocessing):
    _check_caption(text)
    if not use_text_preprocessing:
        return text.lower().strip()
    cleaned = _clean_once(_clean_once(text))
    _warn_about(text, cleaned, stacklevel=4)  # point at text_preprocessing's caller
    return cleaned
