"""Mask strategies: which reference latent frames are written into a clip, and how much they are edited.

A mask strategy is a string of `;`-separated entries, each up to six comma-separated fields
``loop_id,ref_id,ref_start,target_start,length,edit_ratio`` (missing trailing fields default to
``0,0,0,0,1,0``); see SPEC.md §4. The flow is

    parse_mask_strategy(str) -> [MaskEntry]  ->  plan_mask(entries, loop, T, ref lengths) -> FramePlan
                                              ->  apply_mask_plan(z, reference latents, plan) -> (z, edit_ratio)

All frame counts and indices here are *latent* frames. With the per-frame VAE used by this project a
latent frame is a pixel frame, so the two coincide.

Long video (`--loop K --condition-frame-length L`): `condition_entries_for_loop` builds the implicit
entry that fixes frames 0..L-1 of clip k > 0 to the last L frames of clip k-1, and `total_frames` /
`output_frame_slice` say how the clips are joined.
"""
import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

FIELD_NAMES = ("loop_id", "ref_id", "ref_start", "target_start", "length", "edit_ratio")
FIELD_DEFAULTS = ("0", "0", "0", "0", "1", "0")
_FORMAT_HELP = (
    "an entry is up to 6 comma-separated numbers loop_id,ref_id,ref_start,target_start,length,"
    "edit_ratio (defaults 0,0,0,0,1,0): integers loop_id >= 0, ref_id >= 0, ref_start, target_start, "
    "length >= 1, and a float edit_ratio in [0, 1]; entries are separated by ';'"
)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class MaskEntry:
    """One mask-strategy entry (SPEC.md §4 table).

    Attributes:
        loop_id: the loop (0-based clip number) the entry applies to; >= 0.
        ref_id: index into the prompt's `;`-split references; >= 0.
        ref_start: first reference latent frame taken; negative counts from the reference's end.
        target_start: first latent frame of the clip written; negative counts from the clip's end.
        length: number of latent frames; >= 1.
        edit_ratio: 0 = frame fixed to the reference, 0 < r < 1 = SDEdit strength, 1 = regenerated.

    Raises:
        ValueError: a field has the wrong type or lies outside its range.
    """

    loop_id: int = 0
    ref_id: int = 0
    ref_start: int = 0
    target_start: int = 0
    length: int = 1
    edit_ratio: float = 0.0

    def __post_init__(self):
        for name in FIELD_NAMES[:5]:
            value = getattr(self, name)
            if not _is_int(value):
                raise ValueError(f"mask entry field {name}={value!r} must be an integer")
            object.__setattr__(self, name, int(value))
        for name in ("loop_id", "ref_id"):
            if getattr(self, name) < 0:
                raise ValueError(f"mask entry field {name}={getattr(self, name)} must be >= 0")
        if self.length < 1:
            raise ValueError(f"mask entry field length={self.length} must be >= 1")
        ratio = self.edit_ratio
        if isinstance(ratio, (bool, np.bool_)) or not isinstance(ratio, (int, float, np.integer, np.floating)):
            raise ValueError(f"mask entry field edit_ratio={ratio!r} must be a number in [0, 1]")
        ratio = float(ratio)
        if not (0.0 <= ratio <= 1.0):  # also rejects nan
            raise ValueError(f"mask entry field edit_ratio={ratio!r} must be in [0, 1]")
        object.__setattr__(self, "edit_ratio", ratio)

    def __str__(self) -> str:
        """The entry in mask-strategy syntax, all six fields, e.g. ``0,1,0,-1,1,0``."""
        return (
            f"{self.loop_id},{self.ref_id},{self.ref_start},{self.target_start},{self.length},"
            f"{self.edit_ratio:g}"
        )


def parse_mask_strategy(strategy: Optional[str]) -> List[MaskEntry]:
    """Parse a mask-strategy string into entries, filling missing trailing fields with defaults.

    Args:
        strategy: e.g. ``"0;0,1,0,-1,1"``. None or a blank string means no entries.

    Returns:
        list of `MaskEntry`, in the order given (later entries override earlier ones in `plan_mask`).

    Raises:
        ValueError: naming the entry, when the strategy is not a string, an entry is empty, has more
            than six fields, a field is not a number (integers for the first five, a float for
            edit_ratio), edit_ratio is outside [0, 1], loop_id / ref_id are negative or length < 1.

    Follows upstream v1.2 `parse_mask_strategy` (defaults table ``0,0,0,0,1,0``) with the SPEC §4
    FIX that bad entries are reported instead of asserting or crashing later.
    """
    if strategy is None:
        return []
    if not isinstance(strategy, str):
        raise ValueError(f"mask_strategy must be a string, got {strategy!r}; {_FORMAT_HELP}")
    if strategy.strip() == "":
        return []
    entries = []
    for number, text in enumerate(strategy.split(";")):
        where = f"mask_strategy {strategy!r}, entry {number} {text!r}"
        fields = [f.strip() for f in text.split(",")]
        if text.strip() == "":
            raise ValueError(f"{where}: empty entry; {_FORMAT_HELP}")
        if len(fields) > len(FIELD_NAMES):
            raise ValueError(f"{where}: {len(fields)} fields, at most 6 accepted; {_FORMAT_HELP}")
        fields += list(FIELD_DEFAULTS[len(fields):])
        values = []
        for name, field in zip(FIELD_NAMES, fields):
            try:
                values.append(float(field) if name == "edit_ratio" else int(field))
            except ValueError:
                kind = "a number" if name == "edit_ratio" else "an integer"
                raise ValueError(f"{where}: field {name}={field!r} is not {kind}; {_FORMAT_HELP}") from None
        try:
            entries.append(MaskEntry(*values))
        except ValueError as err:
            raise ValueError(f"{where}: {err}; {_FORMAT_HELP}") from None
    return entries


@dataclass(frozen=True)
class FramePlan:
    """The per-frame conditioning plan of one clip of T latent frames.

    Attributes:
        edit_ratio: float32 array [T]; 1.0 = generated, 0.0 = fixed to its reference frame,
            0 < r < 1 = reference frame re-noised at strength r (SDEdit).
        sources: length-T tuple; entry t is ``(ref_id, ref_frame)``, the reference latent frame
            written to frame t, or None when frame t starts from noise only.
    """

    edit_ratio: np.ndarray
    sources: Tuple[Optional[Tuple[int, int]], ...]

    @property
    def num_frames(self) -> int:
        """T, the number of latent frames of the clip."""
        return len(self.sources)

    @property
    def has_condition(self) -> bool:
        """True when some frame takes a reference frame (the sampler needs the mask)."""
        return any(s is not None for s in self.sources)


def _resolve_start(start: int, size: int, entry: MaskEntry, name: str, what: str) -> int:
    """A possibly negative start turned into an index in [0, size), or a ValueError naming the entry."""
    index = start + size if start < 0 else start
    if not 0 <= index < size:
        raise ValueError(
            f"mask entry {entry}: {name}={start} lies outside the {what} of {size} latent frames "
            f"(accepted: {-size}..{size - 1}, negative counts from the end)"
        )
    return index


def plan_mask(
    entries: Sequence[MaskEntry], loop_index: int, num_frames: int, reference_lengths: Sequence[int]
) -> FramePlan:
    """Build the per-frame plan of clip `loop_index` from the mask entries.

    Args:
        entries: parsed entries (`parse_mask_strategy`); entries of other loops are skipped.
        loop_index: the clip being generated (0-based).
        num_frames: T, latent frames of the clip.
        reference_lengths: latent frame count of each reference, indexed by ref_id (1 = an image).

    Returns:
        `FramePlan` with edit_ratio [T] (1.0 where no entry writes) and the source of each frame.
        Entries are applied in order, so a later entry overrides an earlier one where they overlap.
        A one-frame reference (an image) is repeated over all `length` target frames. For a longer
        reference, `length` is clamped to the frames left in both the clip and the reference, with
        a logged warning; an image's `length` is likewise clamped to the frames left in the clip.

    Raises:
        ValueError: bad arguments; an entry's ref_id has no reference; its ref_start lies outside
            the reference or its target_start outside the clip (each naming the entry).

    Follows upstream v1.1 `apply_mask_strategy` (image repetition by broadcasting) and v1.2 (length
    clamping), with the SPEC §4 FIXes: out-of-range starts and missing references are errors.
    """
    if not _is_int(num_frames) or num_frames < 1:
        raise ValueError(f"num_frames={num_frames!r} must be an integer >= 1 (latent frames of the clip)")
    if not _is_int(loop_index) or loop_index < 0:
        raise ValueError(f"loop_index={loop_index!r} must be an integer >= 0")
    for ref_id, size in enumerate(reference_lengths):
        if not _is_int(size) or size < 1:
            raise ValueError(f"reference_lengths[{ref_id}]={size!r} must be an integer >= 1 (latent frames)")
    edit_ratio = np.ones(num_frames, dtype=np.float32)
    sources: List[Optional[Tuple[int, int]]] = [None] * num_frames
    for entry in entries:
        if not isinstance(entry, MaskEntry):
            raise ValueError(f"mask entries must be MaskEntry objects, got {entry!r}")
        if entry.loop_id != loop_index:
            continue
        if entry.ref_id >= len(reference_lengths):
            raise ValueError(
                f"mask entry {entry}: ref_id={entry.ref_id} but the prompt has {len(reference_lengths)} "
                f"reference(s) (accepted ref_id: 0..{len(reference_lengths) - 1})"
                if reference_lengths
                else f"mask entry {entry}: ref_id={entry.ref_id} but the prompt has no reference"
            )
        ref_len = reference_lengths[entry.ref_id]
        ref_start = _resolve_start(entry.ref_start, ref_len, entry, "ref_start", f"reference {entry.ref_id}")
        target_start = _resolve_start(entry.target_start, num_frames, entry, "target_start", "clip")
        is_image = ref_len == 1
        length = min(entry.length, num_frames - target_start)
        if not is_image:
            length = min(length, ref_len - ref_start)
        if length < entry.length:
            logger.warning(
                "mask entry %s: length %d clamped to %d (clip of %d latent frames from target frame %d, "
                "reference %d of %d latent frames from frame %d)",
                entry, entry.length, length, num_frames, target_start, entry.ref_id, ref_len, ref_start,
            )
        for offset in range(length):
            sources[target_start + offset] = (entry.ref_id, ref_start if is_image else ref_start + offset)
            edit_ratio[target_start + offset] = entry.edit_ratio
    return FramePlan(edit_ratio=edit_ratio, sources=tuple(sources))


def _is_paddle(x) -> bool:
    return type(x).__module__.split(".")[0] == "paddle"


def apply_mask_plan(z, reference_latents: Sequence, plan: FramePlan):
    """Write the planned reference latent frames into one sample's initial latent.

    Args:
        z: initial (noise) latent of one sample, [C, T, H, W], numpy array or paddle.Tensor.
            Modified in place.
        reference_latents: the prompt's reference latents indexed by ref_id, each [C, R, H, W]
            (numpy or paddle; converted to z's kind and dtype when written).
        plan: `plan_mask` result for this clip, with plan.num_frames == T.

    Returns:
        (z, edit_ratio): the same z with frame t set to reference frame `plan.sources[t]` wherever that
        is not None; edit_ratio [T] float32 of z's kind (numpy array or paddle.Tensor).

    Raises:
        ValueError: z is not 4-D, its T differs from the plan, a planned reference is missing, or a
            reference's C/H/W differ from z's or it has too few frames.
    """
    shape = tuple(z.shape)
    if len(shape) != 4:
        raise ValueError(f"z must be one sample's latent [C, T, H, W], got shape {shape}")
    if shape[1] != plan.num_frames:
        raise ValueError(f"z has {shape[1]} latent frames but the mask plan has {plan.num_frames}")
    paddle_z = _is_paddle(z)
    if paddle_z:
        import paddle
    for target, source in enumerate(plan.sources):
        if source is None:
            continue
        ref_id, ref_frame = source
        if ref_id >= len(reference_latents):
            raise ValueError(
                f"the mask plan uses reference {ref_id} but only {len(reference_latents)} reference latent(s) were given"
            )
        ref = reference_latents[ref_id]
        ref_shape = tuple(ref.shape)
        if len(ref_shape) != 4 or (ref_shape[0],) + ref_shape[2:] != (shape[0],) + shape[2:]:
            raise ValueError(
                f"reference {ref_id} latent has shape {ref_shape}; expected [C, R, H, W] with C, H, W = "
                f"{shape[0]}, {shape[2]}, {shape[3]} like z"
            )
        if ref_frame >= ref_shape[1]:
            raise ValueError(
                f"the mask plan takes frame {ref_frame} of reference {ref_id}, which has {ref_shape[1]} latent frames"
            )
        frame = ref[:, ref_frame]  # [C, H, W]
        if paddle_z:
            if not _is_paddle(frame):
                frame = paddle.to_tensor(np.asarray(frame))
            z[:, target] = frame.astype(z.dtype)
        else:
            if _is_paddle(frame):
                frame = frame.numpy()
            z[:, target] = frame
    if paddle_z:
        return z, paddle.to_tensor(plan.edit_ratio.copy(), dtype="float32")
    return z, plan.edit_ratio.copy()


def _check_long_video_args(num_frames, loop, condition_frame_length) -> None:
    if not _is_int(num_frames) or num_frames < 1:
        raise ValueError(f"num_frames={num_frames!r} must be an integer >= 1 (latent frames per clip)")
    if not _is_int(loop) or loop < 1:
        raise ValueError(f"loop={loop!r} must be an integer >= 1 (number of clips)")
    if not _is_int(condition_frame_length) or condition_frame_length < 0:
        raise ValueError(
            f"condition_frame_length={condition_frame_length!r} must be an integer >= 0 (latent frames)"
        )
    if loop > 1 and condition_frame_length >= num_frames:
        raise ValueError(
            f"condition_frame_length={condition_frame_length} must be < num_frames={num_frames} when "
            f"loop={loop} > 1 (accepted: 0..{num_frames - 1})"
        )


def total_frames(num_frames: int, loop: int, condition_frame_length: int) -> int:
    """Frames of the joined long video: clip 0 plus every later clip minus its first L frames.

    Args:
        num_frames: N, frames per clip (latent = pixel frames with the per-frame VAE).
        loop: K >= 1, number of clips.
        condition_frame_length: L, frames each later clip takes from the end of the previous one;
            0 <= L < N. With K == 1 it is unused and only checked to be >= 0, so an image run
            (N == 1) works with the default L.

    Returns:
        N + (K - 1) * (N - L).

    Raises:
        ValueError: N < 1, K < 1, L < 0, or K > 1 and L >= N (naming the value and accepted range).

    SPEC §4 "Long video" (FIX: L must be < N, upstream did not check).
    """
    _check_long_video_args(num_frames, loop, condition_frame_length)
    return num_frames + (loop - 1) * (num_frames - condition_frame_length)


def output_frame_slice(loop_index: int, condition_frame_length: int) -> slice:
    """Frames of clip `loop_index` kept in the joined video: all of clip 0, frames L.. of later clips.

    Raises:
        ValueError: negative loop_index or condition_frame_length.
    """
    if not _is_int(loop_index) or loop_index < 0:
        raise ValueError(f"loop_index={loop_index!r} must be an integer >= 0")
    if not _is_int(condition_frame_length) or condition_frame_length < 0:
        raise ValueError(f"condition_frame_length={condition_frame_length!r} must be an integer >= 0")
    return slice(0, None) if loop_index == 0 else slice(condition_frame_length, None)


def condition_entries_for_loop(
    loop_index: int, condition_frame_length: int, previous_clip_ref_id: int, condition_frame_edit: float = 0.0
) -> List[MaskEntry]:
    """The implicit entries joining clip `loop_index` to the previous clip in a long video.

    For loop k > 0 and L > 0 this is one entry: the last L frames of the previous clip (passed to
    `plan_mask` as reference `previous_clip_ref_id`, of length N) become frames 0..L-1 of clip k,
    i.e. ``k,previous_clip_ref_id,-L,0,L,condition_frame_edit``. Loop 0, or L == 0, has none.

    Usage: ``plan_mask(user_entries + condition_entries_for_loop(k, L, len(refs)), k, N,
    [len of each user reference] + [N])`` with the previous clip's latent appended to the user's
    reference latents (replaced each loop, never accumulated: memory stays flat). Placed after the
    user's entries, it overrides any of them on frames 0..L-1 (as upstream); those frames are cut
    from the joined video anyway (`output_frame_slice`).

    Args:
        loop_index: k, the clip being generated.
        condition_frame_length: L, latent frames taken from the previous clip; >= 0.
        previous_clip_ref_id: the ref_id under which the previous clip's latent is passed.
        condition_frame_edit: edit ratio of those frames (0 = fixed, as upstream v1.1).

    Raises:
        ValueError: negative loop_index / L / ref_id, or edit ratio outside [0, 1].
    """
    if not _is_int(loop_index) or loop_index < 0:
        raise ValueError(f"loop_index={loop_index!r} must be an integer >= 0")
    if not _is_int(condition_frame_length) or condition_frame_length < 0:
        raise ValueError(f"condition_frame_length={condition_frame_length!r} must be an integer >= 0")
    if loop_index == 0 or condition_frame_length == 0:
        return []
    try:
        entry = MaskEntry(
            loop_id=loop_index,
            ref_id=previous_clip_ref_id,
            ref_start=-condition_frame_length,
            target_start=0,
            length=condition_frame_length,
            edit_ratio=condition_frame_edit,
        )
    except ValueError as err:
        raise ValueError(f"long-video condition entry: {err}") from None
    return [entry]

