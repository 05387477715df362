"""Prompts for inference: the JSON suffix, per-loop texts, reference/mask options and save paths.

A prompt is ``TEXT`` optionally followed by one JSON object (SPEC.md §4)::

    the digit 3 moves right.{"reference_path": "x.png;y.mp4", "mask_strategy": "0;0,1,0,-1,1"}

and TEXT may be a per-loop text ``|0|text a|2|text b`` (loops 0-1 use "text a", loops 2.. "text b").
`parse_prompts` runs the whole chain for a list of prompts and returns one `PromptPlan` each;
the smaller functions are its steps.
"""
import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .mask_strategy import MaskEntry, parse_mask_strategy

ACCEPTED_KEYS = ("reference_path", "mask_strategy")
_LOOP_INDEX = re.compile(r"\s*(\d+)\s*")


def _reject_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"duplicate key(s) {', '.join(map(repr, duplicates))}")
    return dict(pairs)


def split_prompt(prompt: str) -> Tuple[str, Dict[str, str]]:
    """Split a prompt into its text and the options of its JSON suffix.

    The suffix starts at the first ``{`` and must be exactly one JSON object running to the end of
    the prompt (trailing whitespace is allowed). A ``[`` in the text is plain text (v1.2 behaviour;
    v1.1 also split there). A ``{`` cannot appear in the text.

    Args:
        prompt: ``TEXT`` or ``TEXT{...}``.

    Returns:
        (text, options): text stripped of surrounding whitespace; options maps the accepted keys
        (`ACCEPTED_KEYS`) present in the suffix to their string values ({} without a suffix).

    Raises:
        ValueError: naming the prompt, when it is not a string, the JSON is malformed or has
            duplicate keys, characters or a second object follow it, a key is not one of
            `ACCEPTED_KEYS` (FIX: upstream v1.1 ignored it), or a value is not a string.

    Follows upstream `extract_json_from_prompts` with the SPEC §4 FIXes.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string, got {prompt!r}")
    start = prompt.find("{")
    if start < 0:
        return prompt.strip(), {}
    text, suffix = prompt[:start].strip(), prompt[start:]
    decoder = json.JSONDecoder(object_pairs_hook=_reject_duplicate_keys)
    try:
        options, end = decoder.raw_decode(suffix)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"prompt {prompt!r}: its JSON suffix {suffix!r} is malformed ({err.msg} at character {err.pos} "
            f"of the suffix); expected TEXT{{\"reference_path\": \"...\", \"mask_strategy\": \"...\"}}"
        ) from None
    except ValueError as err:  # from _reject_duplicate_keys
        raise ValueError(f"prompt {prompt!r}: its JSON suffix has {err}") from None
    rest = suffix[end:].strip()
    if rest.startswith("{"):
        raise ValueError(
            f"prompt {prompt!r}: a second JSON object {rest!r} follows the suffix; put all keys in one object"
        )
    if rest:
        raise ValueError(
            f"prompt {prompt!r}: trailing characters {rest!r} after the JSON suffix; "
            "the suffix must run to the end of the prompt"
        )
    unknown = [k for k in options if k not in ACCEPTED_KEYS]
    if unknown:
        raise ValueError(
            f"prompt {prompt!r}: unknown key(s) {', '.join(map(repr, unknown))} in the JSON suffix; "
            f"accepted keys: {', '.join(ACCEPTED_KEYS)}"
        )
    for key, value in options.items():
        if not isinstance(value, str):
            raise ValueError(
                f"prompt {prompt!r}: {key} must be a string (e.g. \"a.png;b.mp4\" or \"0;0,1,0,-1,1\"), got {value!r}"
            )
    return text, options


def split_reference_paths(reference_path: Optional[str]) -> List[str]:
    """``"a.png; b.mp4"`` -> ``["a.png", "b.mp4"]``; None or blank -> [].

    Raises:
        ValueError: an empty entry (e.g. ``"a.png;;b.png"`` or a trailing ``;``), naming the value.
    """
    if reference_path is not None and not isinstance(reference_path, str):
        raise ValueError(f"reference_path must be a string of paths joined with ';', got {reference_path!r}")
    if reference_path is None or reference_path.strip() == "":
        return []
    paths = [p.strip() for p in reference_path.split(";")]
    if any(p == "" for p in paths):
        raise ValueError(
            f"reference_path {reference_path!r} has an empty entry; give file paths separated by ';'"
        )
    return paths


def resolve_prompt_options(
    options: Dict[str, str], reference_path_flag: Optional[str] = None, mask_strategy_flag: Optional[str] = None
) -> Tuple[List[str], str]:
    """Combine a prompt's suffix options with the `--reference-path` / `--mask-strategy` flags.

    A key present in the suffix overrides the flag for this prompt; an empty string there clears it.

    Args:
        options: from `split_prompt`.
        reference_path_flag: the flag's value for this prompt (``;``-joined paths) or None.
        mask_strategy_flag: the flag's value for this prompt or None.

    Returns:
        (reference_paths, mask_strategy): the list of paths (see `split_reference_paths`) and the
        strategy string ("" when none). The strategy is checked with `parse_mask_strategy`.

    Raises:
        ValueError: a mask strategy without any reference (FIX: upstream dropped it silently), a
            reference without a mask strategy (it would be ignored), an empty path entry, or an
            invalid strategy.
    """
    unknown = [k for k in options if k not in ACCEPTED_KEYS]
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; accepted keys: {', '.join(ACCEPTED_KEYS)}")
    reference_path = options.get("reference_path", reference_path_flag)
    mask_strategy = options.get("mask_strategy", mask_strategy_flag)
    references = split_reference_paths(reference_path)
    parse_mask_strategy(mask_strategy)  # raises on a non-string or a bad entry
    mask_strategy = "" if mask_strategy is None else mask_strategy.strip()
    if mask_strategy and not references:
        raise ValueError(
            f"mask_strategy {mask_strategy!r} is given without any reference; add reference_path "
            "(suffix key or --reference-path) or drop the mask strategy"
        )
    if references and not mask_strategy:
        raise ValueError(
            f"reference_path {reference_path!r} is given without a mask_strategy, so it would be unused; "
            'add one, e.g. "0" to fix the first frame to the first reference'
        )
    return references, mask_strategy


def _check_loop(loop) -> None:
    if not isinstance(loop, int) or isinstance(loop, bool) or loop < 1:
        raise ValueError(f"loop={loop!r} must be an integer >= 1 (number of clips)")


def expand_loop_prompts(text: str, loop: int) -> List[str]:
    """The text of each loop: ``|0|text a|2|text b`` with loop 4 -> [a, a, b, b]; plain text -> [text] * loop.

    A text starting with ``|`` is a per-loop text: ``|i0|t0|i1|t1...`` with i0 == 0, strictly
    increasing indices < loop and non-empty texts; segment j covers loops i_j .. i_{j+1}-1 and the
    last one runs to loop-1 (so the expansion always has `loop` texts). Texts are stripped and
    cannot contain ``|``.

    Raises:
        ValueError: naming the text, on bad syntax (odd number of fields, a non-integer index, an
            empty text), a first index other than 0, non-increasing indices, or an index >= loop
            (that text would never be used: the expansion would not have `loop` texts).

    Follows upstream v1.1 `process_prompts` / v1.2 `extract_prompts_loop`, with errors instead of
    asserts.
    """
    _check_loop(loop)
    if not text.startswith("|"):
        return [text] * loop
    fields = text.split("|")[1:]
    where = f"per-loop prompt {text!r}"
    syntax = "expected |0|text a|2|text b (loop index, then its text)"
    if len(fields) % 2:
        raise ValueError(f"{where}: bad syntax, {len(fields)} '|'-separated fields; {syntax}")
    starts, texts = [], []
    for index, segment in zip(fields[0::2], fields[1::2]):
        match = _LOOP_INDEX.fullmatch(index)
        if match is None:
            raise ValueError(f"{where}: loop index {index!r} is not a non-negative integer; {syntax}")
        if segment.strip() == "":
            raise ValueError(f"{where}: the text for loop {index.strip()} is empty; {syntax}")
        starts.append(int(match.group(1)))
        texts.append(segment.strip())
    if starts[0] != 0:
        raise ValueError(f"{where}: the first loop index is {starts[0]}, it must be 0; {syntax}")
    for previous, current in zip(starts, starts[1:]):
        if current <= previous:
            raise ValueError(f"{where}: loop indices must increase, got {current} after {previous}")
    if starts[-1] >= loop:
        raise ValueError(
            f"{where}: loop index {starts[-1]} but loop={loop} (accepted indices 0..{loop - 1}); "
            f"the expanded texts would not number {loop}"
        )
    ends = starts[1:] + [loop]
    return [t for t, s, e in zip(texts, starts, ends) for _ in range(e - s)]


@dataclass(frozen=True)
class PromptPlan:
    """Everything the pipeline needs to know about one prompt.

    Attributes:
        prompt: the prompt as given.
        text: the text without the JSON suffix (possibly per-loop syntax).
        texts: the text of each loop, length `loop`.
        reference_paths: the reference files, indexed by ref_id.
        mask_strategy: the strategy string ("" when none).
        entries: the parsed strategy.
    """

    prompt: str
    text: str
    texts: List[str]
    reference_paths: List[str]
    mask_strategy: str
    entries: List[MaskEntry]


FlagValue = Union[None, str, Sequence[str]]


def _per_prompt(flag: FlagValue, name: str, count: int) -> List[Optional[str]]:
    if flag is None or isinstance(flag, str):
        return [flag] * count
    values = list(flag)
    if len(values) != count or not all(v is None or isinstance(v, str) for v in values):
        raise ValueError(
            f"{name} {values!r}: give one string for all prompts or one per prompt ({count} prompts)"
        )
    return values


def parse_prompts(
    prompts: Sequence[str], loop: int = 1, reference_path: FlagValue = None, mask_strategy: FlagValue = None
) -> List[PromptPlan]:
    """Parse every prompt: suffix, flags, per-loop texts, mask strategy; fail before any model loads.

    Args:
        prompts: the prompts (a list, not a single string).
        loop: K, number of clips per prompt.
        reference_path: `--reference-path`: None, one string for all prompts, or one per prompt.
        mask_strategy: `--mask-strategy`: likewise.

    Returns:
        one `PromptPlan` per prompt.

    Raises:
        ValueError: prefixed with the prompt's index and text, for any error of `split_prompt`,
            `resolve_prompt_options`, `expand_loop_prompts`, `parse_mask_strategy`; an entry whose
            ref_id has no reference or whose loop_id >= loop (it would never apply); an empty list
            or a flag list whose length differs from the number of prompts.
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    _check_loop(loop)
    references_flags = _per_prompt(reference_path, "reference_path", len(prompts))
    strategy_flags = _per_prompt(mask_strategy, "mask_strategy", len(prompts))
    plans = []
    for number, (prompt, ref_flag, strategy_flag) in enumerate(zip(prompts, references_flags, strategy_flags)):
        try:
            text, options = split_prompt(prompt)
            references, strategy = resolve_prompt_options(options, ref_flag, strategy_flag)
            texts = expand_loop_prompts(text, loop)
            entries = parse_mask_strategy(strategy)
            for entry in entries:
                if entry.ref_id >= len(references):
                    raise ValueError(
                        f"mask entry {entry}: ref_id={entry.ref_id} but there are {len(references)} "
                        f"reference(s) {references} (accepted ref_id: 0..{len(references) - 1})"
                    )
                if entry.loop_id >= loop:
                    raise ValueError(
                        f"mask entry {entry}: loop_id={entry.loop_id} but loop={loop} "
                        f"(accepted loop_id: 0..{loop - 1})"
                    )
        except ValueError as err:
            raise ValueError(f"prompt {number} ({prompt!r}): {err}") from None
        plans.append(PromptPlan(prompt, text, texts, references, strategy, entries))
    return plans


_UNSAFE_PATH_CHARS = re.compile(r"[\\/\x00]")
MAX_PROMPT_PATH_CHARS = 100


def get_save_path(
    save_dir: str,
    sample_name: Optional[str],
    index: int,
    prompt: Optional[str] = None,
    prompt_as_path: bool = False,
    num_sample: int = 1,
    k: int = 0,
) -> str:
    """Where sample `index` (its `k`-th draw) is saved, without extension (the writer adds .mp4/.png).

    Like upstream v1.2 `get_save_path_name`: ``save_dir/{name}_{index:04d}`` with name defaulting to
    "sample"; with `prompt_as_path`, ``save_dir/{name}{prompt}`` with name defaulting to ""; and
    ``-{k}`` appended when num_sample != 1. Unlike upstream, path separators in the prompt become
    ``_`` and the prompt part is cut to `MAX_PROMPT_PATH_CHARS` characters (file-name limits).

    Raises:
        ValueError: index < 0, num_sample < 1, k outside 0..num_sample-1, or prompt_as_path
            without a non-empty prompt.
    """
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"index={index!r} must be an integer >= 0")
    if not isinstance(num_sample, int) or num_sample < 1:
        raise ValueError(f"num_sample={num_sample!r} must be an integer >= 1")
    if not isinstance(k, int) or not 0 <= k < num_sample:
        raise ValueError(f"k={k!r} must be an integer in 0..{num_sample - 1}")
    if prompt_as_path:
        if not prompt or not prompt.strip():
            raise ValueError(f"prompt_as_path needs a non-empty prompt, got {prompt!r}")
        name = "" if sample_name is None else sample_name
        suffix = _UNSAFE_PATH_CHARS.sub("_", prompt.strip())[:MAX_PROMPT_PATH_CHARS]
    else:
        name = "sample" if sample_name is None else sample_name
        suffix = f"_{index:04d}"
    path = os.path.join(save_dir, f"{name}{suffix}")
    if num_sample != 1:
        path = f"{path}-{k}"
    return path
