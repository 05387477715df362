"""utils/prompts.py: the JSON suffix, flag resolution, per-loop texts, whole-list parsing, save paths."""
import os

import pytest

from utils.mask_strategy import MaskEntry
from utils.prompts import (
    ACCEPTED_KEYS,
    PromptPlan,
    expand_loop_prompts,
    get_save_path,
    parse_prompts,
    resolve_prompt_options,
    split_prompt,
    split_reference_paths,
)

# ---------------------------------------------------------------- split_prompt


@pytest.mark.parametrize(
    "prompt, text, options",
    [
        ("the digit 3 moves right.", "the digit 3 moves right.", {}),
        (
            'the digit 3 moves right.{"reference_path": "assets/images/x.png","mask_strategy": "0"}',
            "the digit 3 moves right.",
            {"reference_path": "assets/images/x.png", "mask_strategy": "0"},
        ),
        ('a [red] car drives.{"mask_strategy": "0"}', "a [red] car drives.", {"mask_strategy": "0"}),
        ("a [red] car [drives].", "a [red] car [drives].", {}),
        ("a cat. {}", "a cat.", {}),
        ('a cat.{"reference_path": "a.png"}  \n', "a cat.", {"reference_path": "a.png"}),
        ('|0|a cat|2|a dog{"reference_path": "a|b.png"}', "|0|a cat|2|a dog", {"reference_path": "a|b.png"}),
        ('{"reference_path": "a.png"}', "", {"reference_path": "a.png"}),
    ],
)
def test_split_prompt(prompt, text, options):
    assert split_prompt(prompt) == (text, options)


@pytest.mark.parametrize(
    "prompt, problem",
    [
        ('a cat.{"reference_path": "a.png"', "malformed"),
        ("a cat.{reference_path: a.png}", "malformed"),
        ('a cat.{"mask_strategy": "0",}', "malformed"),
        ('a cat.{"mask_strategy": "0"} and more', "trailing characters 'and more'"),
        ('a cat.{"mask_strategy": "0"}]', "trailing characters ']'"),
        ('a cat.{"mask_strategy": "0"}{"reference_path": "a.png"}', "a second JSON object"),
        ('a cat.{"mask_strategy": "0"} {"reference_path": "a.png"}', "a second JSON object"),
        ('a cat.{"mask_strategy": "0", "mask_strategy": "1"}', "duplicate key(s) 'mask_strategy'"),
        ('a cat.{"mask_strategy": 0}', "mask_strategy must be a string"),
        ('a cat.{"reference_path": ["a.png"]}', "reference_path must be a string"),
    ],
)
def test_split_prompt_errors_name_prompt_and_problem(prompt, problem):
    with pytest.raises(ValueError) as err:
        split_prompt(prompt)
    assert repr(prompt) in str(err.value) and problem in str(err.value)


def test_split_prompt_unknown_key_lists_accepted_keys():
    prompt = 'a cat.{"reference_path": "a.png", "mask": "0"}'
    with pytest.raises(ValueError) as err:
        split_prompt(prompt)
    message = str(err.value)
    assert repr(prompt) in message and "unknown key(s) 'mask'" in message
    assert all(key in message for key in ACCEPTED_KEYS)


def test_split_prompt_rejects_non_string():
    with pytest.raises(ValueError, match="must be a string"):
        split_prompt(None)


# ---------------------------------------------------------------- resolve_prompt_options


@pytest.mark.parametrize(
    "options, ref_flag, ms_flag, expected",
    [
        ({}, None, None, ([], "")),
        ({}, "a.png", "0", (["a.png"], "0")),
        ({"reference_path": "b.png"}, "a.png", "0", (["b.png"], "0")),  # suffix overrides the flag
        ({"mask_strategy": "0,0,0,-1"}, "a.png", "0", (["a.png"], "0,0,0,-1")),  # key by key
        ({"reference_path": "a.png; v.mp4 ", "mask_strategy": " 0;0,1 "}, None, None, (["a.png", "v.mp4"], "0;0,1")),
        ({"reference_path": "", "mask_strategy": ""}, "a.png", "0", ([], "")),  # "" clears the flags
    ],
)
def test_resolve_prompt_options(options, ref_flag, ms_flag, expected):
    assert resolve_prompt_options(options, ref_flag, ms_flag) == expected


@pytest.mark.parametrize(
    "options, ref_flag, ms_flag, problem",
    [
        ({}, None, "0", "mask_strategy '0' is given without any reference"),
        ({"mask_strategy": "0"}, None, None, "without any reference"),
        ({"reference_path": ""}, "a.png", "0", "without any reference"),
        ({}, "a.png", None, "without a mask_strategy"),
        ({"reference_path": "a.png;;b.png", "mask_strategy": "0"}, None, None, "has an empty entry"),
        ({"reference_path": "a.png;", "mask_strategy": "0"}, None, None, "has an empty entry"),
        ({"reference_path": "a.png", "mask_strategy": "0;"}, None, None, "empty entry"),
        ({"extra": "1"}, None, None, "accepted keys: reference_path, mask_strategy"),
        ({}, ["a.png"], "0", "reference_path must be a string"),
        ({}, "a.png", 0, "mask_strategy must be a string"),
    ],
)
def test_resolve_prompt_options_errors(options, ref_flag, ms_flag, problem):
    with pytest.raises(ValueError) as err:
        resolve_prompt_options(options, ref_flag, ms_flag)
    assert problem in str(err.value)


def test_split_reference_paths():
    assert split_reference_paths(None) == [] and split_reference_paths(" ") == []
    assert split_reference_paths("a.png ;b.mp4") == ["a.png", "b.mp4"]


# ---------------------------------------------------------------- expand_loop_prompts


@pytest.mark.parametrize(
    "text, loop, expected",
    [
        ("a cat", 1, ["a cat"]),
        ("a cat", 3, ["a cat"] * 3),
        ("a cat | a dog", 2, ["a cat | a dog"] * 2),  # '|' not at the start is plain text
        ("|0|text a|2|text b", 4, ["text a", "text a", "text b", "text b"]),
        ("|0|text a|2|text b", 3, ["text a", "text a", "text b"]),
        ("|0| a |1| b |2| c ", 3, ["a", "b", "c"]),
        ("|0|only", 2, ["only", "only"]),
        ("| 0 |a| 1 |b", 2, ["a", "b"]),
    ],
)
def test_expand_loop_prompts(text, loop, expected):
    assert expand_loop_prompts(text, loop) == expected


@pytest.mark.parametrize(
    "text, loop, problem",
    [
        ("|0|text a|2|text b", 2, "loop index 2 but loop=2"),
        ("|0|text a|5|text b", 3, "accepted indices 0..2"),
        ("|1|text a|2|text b", 3, "the first loop index is 1, it must be 0"),
        ("|0|a|2|b|1|c", 3, "must increase, got 1 after 2"),
        ("|0|a|0|b", 3, "must increase, got 0 after 0"),
        ("|0|a|2|", 3, "the text for loop 2 is empty"),
        ("|0|a|b", 3, "bad syntax"),
        ("|0|a|x|b", 3, "loop index 'x' is not a non-negative integer"),
        ("|0|a|-1|b", 3, "loop index '-1'"),
        ("|0||2|b", 3, "the text for loop 0 is empty"),
        ("|", 3, "bad syntax"),
        ("a cat", 0, "loop=0 must be an integer >= 1"),
    ],
)
def test_expand_loop_prompts_errors(text, loop, problem):
    with pytest.raises(ValueError) as err:
        expand_loop_prompts(text, loop)
    assert problem in str(err.value)
    if text.startswith("|"):
        assert repr(text) in str(err.value)


# ---------------------------------------------------------------- parse_prompts


def test_parse_prompts_builds_plans():
    plans = parse_prompts(
        [
            "a cat.",
            'a dog.{"reference_path": "a.png;b.png","mask_strategy": "0;0,1,0,-1,1"}',
            '|0|a bird|1|a plane{"mask_strategy": "1,0,-2,0,2,0.5"}',
        ],
        loop=2,
        reference_path=[None, None, "v.mp4"],
    )
    assert all(isinstance(p, PromptPlan) for p in plans)
    assert plans[0].texts == ["a cat.", "a cat."] and plans[0].entries == [] and plans[0].reference_paths == []
    assert plans[1].reference_paths == ["a.png", "b.png"]
    assert plans[1].entries == [MaskEntry(), MaskEntry(0, 1, 0, -1, 1, 0.0)]
    assert plans[2].text == "|0|a bird|1|a plane" and plans[2].texts == ["a bird", "a plane"]
    assert plans[2].reference_paths == ["v.mp4"] and plans[2].mask_strategy == "1,0,-2,0,2,0.5"


def test_parse_prompts_string_flags_apply_to_all():
    plans = parse_prompts(["a", 'b{"mask_strategy": "0,0,0,-1"}'], reference_path="x.png", mask_strategy="0")
    assert [p.reference_paths for p in plans] == [["x.png"], ["x.png"]]
    assert [p.mask_strategy for p in plans] == ["0", "0,0,0,-1"]


@pytest.mark.parametrize(
    "prompts, kwargs, problem",
    [
        (["a", 'b{"mask_strategy": "0"}'], {}, "prompt 1 ('b{\"mask_strategy\": \"0\"}'): mask_strategy '0'"),
        (['a{"reference_path": "x.png", "mask_strategy": "0,1"}'], {}, "ref_id=1 but there are 1 reference(s)"),
        (['a{"reference_path": "x.png", "mask_strategy": "2"}'], {"loop": 2}, "loop_id=2 but loop=2"),
        (["|0|a|3|b"], {"loop": 2}, "prompt 0 ('|0|a|3|b'): per-loop prompt"),
        (['a{"mask_strategy": "0"'], {}, "malformed"),
        (["a", "b"], {"reference_path": ["x.png"]}, "one per prompt (2 prompts)"),
        ("a cat", {}, "non-empty list of strings"),
        ([], {}, "non-empty list of strings"),
        (["a"], {"loop": 0}, "loop=0"),
    ],
)
def test_parse_prompts_errors(prompts, kwargs, problem):
    with pytest.raises(ValueError) as err:
        parse_prompts(prompts, **kwargs)
    assert problem in str(err.value)


# ---------------------------------------------------------------- get_save_path


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(sample_name=None, index=3), "sample_0003"),
        (dict(sample_name="run", index=12), "run_0012"),
        (dict(sample_name=None, index=3, num_sample=2, k=1), "sample_0003-1"),
        (dict(sample_name=None, index=0, prompt=" a cat ", prompt_as_path=True), "a cat"),
        (dict(sample_name="x-", index=0, prompt="a/b\\c", prompt_as_path=True), "x-a_b_c"),
        (dict(sample_name=None, index=0, prompt="p" * 300, prompt_as_path=True), "p" * 100),
    ],
)
def test_get_save_path(kwargs, expected):
    assert get_save_path("out", **kwargs) == os.path.join("out", expected)


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        (dict(index=-1), "index=-1"),
        (dict(index=0, num_sample=0), "num_sample=0"),
        (dict(index=0, num_sample=2, k=2), "k=2 must be an integer in 0..1"),
        (dict(index=0, prompt_as_path=True, prompt=""), "prompt_as_path needs a non-empty prompt"),
    ],
)
def test_get_save_path_errors(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        get_save_path("out", None, **kwargs)
