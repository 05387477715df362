"""utils/mask_strategy.py: parsing, per-frame plans (SPEC §4 worked examples), writing latents, long video."""
import logging

import numpy as np
import pytest

from utils.mask_strategy import (
    FramePlan,
    MaskEntry,
    apply_mask_plan,
    condition_entries_for_loop,
    output_frame_slice,
    parse_mask_strategy,
    plan_mask,
    total_frames,
)
from utils.prompts import parse_prompts

# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", [MaskEntry(0, 0, 0, 0, 1, 0.0)]),
        ("1,2", [MaskEntry(1, 2, 0, 0, 1, 0.0)]),
        ("1,2,-3,4,5,0.5", [MaskEntry(1, 2, -3, 4, 5, 0.5)]),
        (" 0 , 1 ,0, -1 ,1", [MaskEntry(0, 1, 0, -1, 1, 0.0)]),
        ("0;0,1,0,-1,1", [MaskEntry(), MaskEntry(0, 1, 0, -1, 1, 0.0)]),
        ("0,0,0,0,7,1", [MaskEntry(0, 0, 0, 0, 7, 1.0)]),
        ("", []),
        ("  ", []),
        (None, []),
    ],
)
def test_parse_fills_defaults(text, expected):
    assert parse_mask_strategy(text) == expected


@pytest.mark.parametrize(
    "text, entry, problem",
    [
        ("0;", "''", "empty entry"),
        (";0", "''", "empty entry"),
        ("0;;1", "''", "empty entry"),
        ("0, ,1", "'0, ,1'", "not an integer"),
        ("0,0,0,0,1,0,7", "'0,0,0,0,1,0,7'", "7 fields, at most 6"),
        ("a", "'a'", "loop_id='a' is not an integer"),
        ("0,0,0.5", "'0,0,0.5'", "ref_start='0.5' is not an integer"),
        ("0,0,0,0,1,x", "'0,0,0,0,1,x'", "edit_ratio='x' is not a number"),
        ("0,0,0,0,0", "'0,0,0,0,0'", "length=0 must be >= 1"),
        ("0,0,0,0,1,1.5", "'0,0,0,0,1,1.5'", "must be in [0, 1]"),
        ("0,0,0,0,1,-0.1", "'0,0,0,0,1,-0.1'", "must be in [0, 1]"),
        ("0,0,0,0,1,nan", "'0,0,0,0,1,nan'", "must be in [0, 1]"),
        ("-1", "'-1'", "loop_id=-1 must be >= 0"),
        ("0;0,-1", "'0,-1'", "ref_id=-1 must be >= 0"),
    ],
)
def test_parse_errors_name_the_entry(text, entry, problem):
    with pytest.raises(ValueError) as err:
        parse_mask_strategy(text)
    message = str(err.value)
    assert "entry" in message and entry in message and problem in message


def test_parse_rejects_non_string():
    with pytest.raises(ValueError, match="must be a string"):
        parse_mask_strategy(0)


@pytest.mark.parametrize(
    "kwargs", [dict(length=0), dict(loop_id=-1), dict(ref_id=True), dict(edit_ratio=2.0), dict(ref_start=1.0)]
)
def test_mask_entry_validates(kwargs):
    with pytest.raises(ValueError, match="mask entry field"):
        MaskEntry(**kwargs)


def test_mask_entry_str_round_trips():
    entry = MaskEntry(1, 2, -3, 4, 5, 0.4)
    assert str(entry) == "1,2,-3,4,5,0.4"
    assert parse_mask_strategy(str(entry)) == [entry]


# ---------------------------------------------------------------- SPEC §4 worked examples

V = 10  # latent frames of the example video reference "v.mp4"

WORKED_EXAMPLES = [
    # suffix, frames, reference lengths, {target frame: (ref_id, ref frame)}, {target frame: edit ratio != 1}
    (
        '{"reference_path": "wave.png","mask_strategy": "0"}',
        20,
        [1],
        {0: (0, 0)},
        {0: 0.0},
    ),
    (
        '{"reference_path": "a.png;b.png","mask_strategy": "0;0,1,0,-1,1"}',
        18,
        [1, 1],
        {0: (0, 0), 17: (1, 0)},
        {0: 0.0, 17: 0.0},
    ),
    (
        '{"reference_path": "v.mp4","mask_strategy": "0,0,0,-6,6"}',
        12,
        [V],
        {6 + i: (0, i) for i in range(6)},
        {6 + i: 0.0 for i in range(6)},
    ),
    (
        '{"reference_path": "v.mp4","mask_strategy": "0,0,-6,0,6"}',
        12,
        [V],
        {i: (0, V - 6 + i) for i in range(6)},
        {i: 0.0 for i in range(6)},
    ),
    (
        '{"reference_path": "v.mp4","mask_strategy": "0,0,0,0,7,0.4"}',
        7,
        [V],
        {i: (0, i) for i in range(7)},
        {i: 0.4 for i in range(7)},
    ),
]


@pytest.mark.parametrize("suffix, frames, ref_lengths, sources, ratios", WORKED_EXAMPLES)
def test_spec_worked_examples(suffix, frames, ref_lengths, sources, ratios, caplog):
    (prompt_plan,) = parse_prompts([f"a wave.{suffix}"])
    assert len(prompt_plan.reference_paths) == len(ref_lengths)
    with caplog.at_level(logging.WARNING):
        plan = plan_mask(prompt_plan.entries, 0, frames, ref_lengths)
    assert not caplog.records  # nothing clamped in the worked examples
    assert plan.num_frames == frames and plan.has_condition
    assert plan.sources == tuple(sources.get(t) for t in range(frames))
    expected_ratio = np.array([ratios.get(t, 1.0) for t in range(frames)], dtype=np.float32)
    np.testing.assert_array_equal(plan.edit_ratio, expected_ratio)
    assert plan.edit_ratio.dtype == np.float32


# ---------------------------------------------------------------- plan semantics


def test_no_entries_means_plain_generation():
    plan = plan_mask([], 0, 5, [])
    assert plan.sources == (None,) * 5 and not plan.has_condition
    np.testing.assert_array_equal(plan.edit_ratio, np.ones(5, np.float32))


def test_entries_of_other_loops_are_skipped():
    entries = parse_mask_strategy("0,0,0,0,2;1,1,0,-1,1,0.3;2,0,0,1,1")
    plan0 = plan_mask(entries, 0, 4, [3, 1])
    plan1 = plan_mask(entries, 1, 4, [3, 1])
    plan2 = plan_mask(entries, 2, 4, [3, 1])
    assert plan0.sources == ((0, 0), (0, 1), None, None)
    assert plan1.sources == (None, None, None, (1, 0))
    np.testing.assert_allclose(plan1.edit_ratio, [1, 1, 1, 0.3])
    assert plan2.sources == (None, (0, 0), None, None)
    assert not plan_mask(entries, 3, 4, [3, 1]).has_condition


def test_later_entries_override_earlier_ones():
    entries = parse_mask_strategy("0,0,0,0,4,0.2;0,1,0,2,3,0.7")
    plan = plan_mask(entries, 0, 6, [8, 8])
    assert plan.sources == ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2), None)
    np.testing.assert_allclose(plan.edit_ratio, [0.2, 0.2, 0.7, 0.7, 0.7, 1.0])


@pytest.mark.parametrize(
    "strategy, sources",
    [
        ("0,0,-1,-1,1", (None, None, None, (0, 4))),
        ("0,0,-5,-4,2", ((0, 0), (0, 1), None, None)),
        ("0,0,-2,1,2", (None, (0, 3), (0, 4), None)),
        ("0,0,3,-2", (None, None, (0, 3), None)),
    ],
)
def test_negative_starts_count_from_the_end(strategy, sources):
    assert plan_mask(parse_mask_strategy(strategy), 0, 4, [5]).sources == sources


def test_image_is_repeated_over_length():
    plan = plan_mask(parse_mask_strategy("0,0,0,1,3,0.5"), 0, 6, [1])
    assert plan.sources == (None, (0, 0), (0, 0), (0, 0), None, None)
    np.testing.assert_allclose(plan.edit_ratio, [1, 0.5, 0.5, 0.5, 1, 1])


def test_image_ref_start_minus_one_is_its_only_frame():
    assert plan_mask(parse_mask_strategy("0,0,-1,0,2"), 0, 3, [1]).sources == ((0, 0), (0, 0), None)


@pytest.mark.parametrize(
    "strategy, frames, ref_len, sources, clamped_to",
    [
        # clip side: 3 frames from target 2 of a 4-frame clip -> 2
        ("0,0,0,2,3", 4, 10, (None, None, (0, 0), (0, 1)), 2),
        # reference side: 5 frames from reference frame 7 of 9 -> 2
        ("0,0,7,0,5", 4, 9, ((0, 7), (0, 8), None, None), 2),
        # both sides, the tighter wins
        ("0,0,-2,-3,9", 5, 6, (None, None, (0, 4), (0, 5), None), 2),
        # an image is only clamped on the clip side
        ("0,0,0,-2,5", 4, 1, (None, None, (0, 0), (0, 0)), 2),
    ],
)
def test_length_clamped_with_warning(strategy, frames, ref_len, sources, clamped_to, caplog):
    with caplog.at_level(logging.WARNING, logger="utils.mask_strategy"):
        plan = plan_mask(parse_mask_strategy(strategy), 0, frames, [ref_len])
    assert plan.sources == sources
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    entry = str(parse_mask_strategy(strategy)[0])
    assert entry in record.getMessage() and f"clamped to {clamped_to}" in record.getMessage()


@pytest.mark.parametrize(
    "strategy, frames, ref_lengths, problem",
    [
        ("0,1", 4, [5], "ref_id=1 but the prompt has 1 reference(s)"),
        ("0", 4, [], "ref_id=0 but the prompt has no reference"),
        ("0,0,0,4", 4, [5], "target_start=4 lies outside the clip of 4"),
        ("0,0,0,-5", 4, [5], "target_start=-5 lies outside the clip of 4"),
        ("0,0,5", 4, [5], "ref_start=5 lies outside the reference 0 of 5"),
        ("0,0,-6", 4, [5], "ref_start=-6 lies outside the reference 0 of 5"),
        ("0,0,1", 4, [1], "ref_start=1 lies outside the reference 0 of 1"),
    ],
)
def test_plan_errors_name_the_entry(strategy, frames, ref_lengths, problem):
    (entry,) = parse_mask_strategy(strategy)
    with pytest.raises(ValueError) as err:
        plan_mask([entry], 0, frames, ref_lengths)
    assert f"mask entry {entry}" in str(err.value) and problem in str(err.value)


def test_errors_of_other_loops_are_not_raised():
    # an entry for loop 1 pointing past the clip only matters in loop 1
    entries = parse_mask_strategy("1,0,0,9")
    assert not plan_mask(entries, 0, 4, [5]).has_condition
    with pytest.raises(ValueError, match="target_start=9"):
        plan_mask(entries, 1, 4, [5])


@pytest.mark.parametrize(
    "args, problem",
    [
        (([], 0, 0, []), "num_frames=0"),
        (([], -1, 4, []), "loop_index=-1"),
        (([], 0, 4, [0]), r"reference_lengths\[0\]=0"),
        ((["0"], 0, 4, [1]), "MaskEntry objects"),
    ],
)
def test_plan_rejects_bad_arguments(args, problem):
    with pytest.raises(ValueError, match=problem):
        plan_mask(*args)


# ---------------------------------------------------------------- writing latents


def _latents(c=2, t=5, h=3, w=4):
    z = np.zeros((c, t, h, w), np.float32) - 1.0
    video = np.arange(c * 6 * h * w, dtype=np.float32).reshape(c, 6, h, w)
    image = np.full((c, 1, h, w), 100.0, np.float32)
    return z, video, image


def test_apply_mask_plan_writes_exact_values_numpy():
    z, video, image = _latents()
    plan = plan_mask(parse_mask_strategy("0,0,-2,0,2;0,1,0,3,2,0.5"), 0, 5, [6, 1])
    out, edit_ratio = apply_mask_plan(z, [video, image], plan)
    assert out is z  # written in place
    np.testing.assert_array_equal(z[:, 0], video[:, 4])
    np.testing.assert_array_equal(z[:, 1], video[:, 5])
    np.testing.assert_array_equal(z[:, 2], -1.0)  # untouched noise
    np.testing.assert_array_equal(z[:, 3], image[:, 0])
    np.testing.assert_array_equal(z[:, 4], image[:, 0])
    np.testing.assert_allclose(edit_ratio, [0, 0, 1, 0.5, 0.5])
    assert edit_ratio.dtype == np.float32 and edit_ratio is not plan.edit_ratio


def test_apply_mask_plan_writes_exact_values_paddle():
    paddle = pytest.importorskip("paddle")
    z_np, video, image = _latents()
    z = paddle.to_tensor(z_np)
    plan = plan_mask(parse_mask_strategy("0,0,1,1,2;0,1,0,-1"), 0, 5, [6, 1])
    out, edit_ratio = apply_mask_plan(z, [paddle.to_tensor(video), image], plan)
    assert isinstance(out, paddle.Tensor) and isinstance(edit_ratio, paddle.Tensor)
    got = out.numpy()
    np.testing.assert_array_equal(got[:, 1:3], video[:, 1:3])
    np.testing.assert_array_equal(got[:, 4], image[:, 0])
    np.testing.assert_array_equal(got[:, [0, 3]], -1.0)
    np.testing.assert_array_equal(edit_ratio.numpy(), [1, 0, 0, 1, 0])
    assert str(edit_ratio.dtype).endswith("float32")


@pytest.mark.parametrize(
    "z_shape, refs, problem",
    [
        ((2, 5, 3), "ok", "must be one sample's latent"),
        ((2, 4, 3, 4), "ok", "z has 4 latent frames but the mask plan has 5"),
        ((2, 5, 3, 4), "none", "only 0 reference latent"),
        ((2, 5, 3, 4), "bad_hw", "expected [C, R, H, W]"),
        ((2, 5, 3, 4), "short", "which has 1 latent frames"),
    ],
)
def test_apply_mask_plan_errors(z_shape, refs, problem):
    plan = plan_mask(parse_mask_strategy("0,0,1,0"), 0, 5, [6])
    references = {
        "ok": [np.zeros((2, 6, 3, 4), np.float32)],
        "none": [],
        "bad_hw": [np.zeros((2, 6, 3, 5), np.float32)],
        "short": [np.zeros((2, 1, 3, 4), np.float32)],
    }[refs]
    with pytest.raises(ValueError) as err:
        apply_mask_plan(np.zeros(z_shape, np.float32), references, plan)
    assert problem in str(err.value)


# ---------------------------------------------------------------- long video


@pytest.mark.parametrize(
    "n, k, l, expected",
    [(16, 1, 4, 16), (16, 2, 4, 28), (16, 3, 4, 40), (12, 4, 0, 48), (1, 1, 5, 1), (8, 3, 7, 10)],
)
def test_total_frames(n, k, l, expected):
    assert total_frames(n, k, l) == expected


@pytest.mark.parametrize(
    "n, k, l, problem",
    [
        (16, 2, 16, "condition_frame_length=16 must be < num_frames=16"),
        (16, 2, 20, "accepted: 0..15"),
        (16, 2, -1, "condition_frame_length=-1"),
        (0, 1, 0, "num_frames=0"),
        (16, 0, 4, "loop=0"),
        (16, True, 4, "loop=True"),
    ],
)
def test_total_frames_errors(n, k, l, problem):
    with pytest.raises(ValueError, match=problem):
        total_frames(n, k, l)


def test_condition_entries_for_loop():
    assert condition_entries_for_loop(0, 4, 2) == []
    assert condition_entries_for_loop(3, 0, 2) == []
    assert condition_entries_for_loop(2, 4, 1) == [MaskEntry(2, 1, -4, 0, 4, 0.0)]
    assert condition_entries_for_loop(1, 3, 0, 0.25) == [MaskEntry(1, 0, -3, 0, 3, 0.25)]
    with pytest.raises(ValueError, match="long-video condition entry"):
        condition_entries_for_loop(1, 3, 0, 1.5)
    with pytest.raises(ValueError, match="condition_frame_length=-2"):
        condition_entries_for_loop(1, -2, 0)


def test_long_video_loop_plan_and_join():
    n, k, l = 8, 3, 3
    user = parse_mask_strategy("0;1,0,0,1,4,0.5;2,0,0,-1")  # one image reference
    clip_ids = []  # each clip's frames, tagged (loop, frame), to check the join
    for loop_index in range(k):
        entries = user + condition_entries_for_loop(loop_index, l, previous_clip_ref_id=1)
        plan = plan_mask(entries, loop_index, n, [1, n])
        if loop_index == 0:
            assert plan.sources[:2] == ((0, 0), None)
        else:
            # the previous clip's last L frames fix frames 0..L-1, overriding the user's entry there
            assert plan.sources[:l] == tuple((1, n - l + i) for i in range(l))
            np.testing.assert_array_equal(plan.edit_ratio[:l], 0.0)
        if loop_index == 1:
            assert plan.sources[l] == (0, 0) and plan.edit_ratio[l] == np.float32(0.5)
        if loop_index == 2:
            assert plan.sources[-1] == (0, 0)
        clip_ids.append([(loop_index, f) for f in range(n)][output_frame_slice(loop_index, l)])
    joined = [frame for clip in clip_ids for frame in clip]
    assert len(joined) == total_frames(n, k, l)
    assert joined[n] == (1, l)  # the first new frame after clip 0


def test_output_frame_slice():
    frames = list(range(6))
    assert frames[output_frame_slice(0, 2)] == frames
    assert frames[output_frame_slice(1, 2)] == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="loop_index=-1"):
        output_frame_slice(-1, 2)


def test_frame_plan_is_a_dataclass():
    plan = FramePlan(edit_ratio=np.ones(2, np.float32), sources=(None, (0, 1)))
    assert plan.num_frames == 2 and plan.has_condition
