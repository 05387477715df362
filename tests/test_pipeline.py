"""The generation pipeline and the inference scripts, end to end on tiny components.

Components: the fixture VAE (diffusers AutoencoderKL, 4 latent channels, factor 2) and fixture T5
(d_model 64) from ../shared/fixtures, and a tiny STDiT (caption_channels 64) saved here.
"""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from models.stdit import STDiT2, STDiT3
from utils.config import load_config
from utils.inference_cli import load_pipeline, resolve_settings, build_parser
from utils.prompts import parse_prompts
from utils.video_io import read_frames, save_video, video_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_STEPS = 3


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, fixtures_dir):
    """A folder with a tiny STDiT3 and STDiT2, configs naming the fixture VAE / T5, and references."""
    d = tmp_path_factory.mktemp("pipe")
    paddle.seed(3)
    tiny = dict(depth=1, hidden_size=48, num_heads=2, caption_channels=64, model_max_length=12, input_sq_size=64)
    for cls in (STDiT3, STDiT2):
        model = cls(**tiny)
        for p in model.parameters():  # the zero-initialised output layers would make every video grey
            p.set_value(p + 0.02 * paddle.randn(p.shape))
        model.save_pretrained(str(d / cls.__name__.lower()))
    hf = os.path.join(fixtures_dir, "hf_tiny")
    for sched in ("rflow", "iddpm"):
        config = {
            "model": {"type": "STDiT3", "from_pretrained": "stdit3"},
            "vae": {"type": "VideoAutoencoderKL", "from_pretrained": os.path.join(hf, "vae_diffusers")},
            "text_encoder": {
                "type": "t5",
                "from_pretrained": os.path.join(hf, "t5_hf"),
                "tokenizer_path": os.path.join(hf, "spm", "spiece.model"),
                "model_max_length": 12,
            },
            "scheduler": {"type": sched, "num_sampling_steps": N_STEPS, "cfg_scale": 4.0},
            "generation": {"num_frames": 6, "image_size": [16, 16], "fps": 8},
        }
        (d / f"{sched}.json").write_text(json.dumps(config))
    # references: a real photo and a short real video clip (Big Buck Bunny, CC-BY 3.0)
    from utils import assets

    frames = read_frames(assets.bigbuckbunny_mp4(), list(range(0, 16, 2)))  # 8 frames
    save_video(frames, str(d / "v.mp4"), fps=8)
    save_video(read_frames(assets.skimage_image("astronaut")), str(d / "a.png"))
    save_video(read_frames(assets.skimage_image("coffee")), str(d / "b.png"))
    return d


def run_script(name, *args, cwd=None):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", name), *args], capture_output=True, text=True, cwd=cwd or ROOT
    )


def explain(workdir, prompt, num_frames, *extra):
    res = run_script(
        "inference-long.py", "--config", str(workdir / "rflow.json"), "--explain", "--num-frames", str(num_frames),
        "--prompt", prompt, *extra, cwd=str(workdir),
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def fixed(loop):
    """{target frame: (ref_id, ref_frame)} of frames with edit ratio 0."""
    return {
        t: (s["ref_id"], s["ref_frame"])
        for t, (r, s) in enumerate(zip(loop["edit_ratio"], loop["sources"]))
        if r == 0.0 and s is not None
    }


def test_spec_worked_examples_through_explain(workdir):
    p = explain(workdir, 'wave.{"reference_path": "a.png","mask_strategy": "0"}', 20)["prompts"][0]
    assert fixed(p["loops"][0]) == {0: (0, 0)} and p["loops"][0]["edit_ratio"][1:] == [1.0] * 19

    p = explain(workdir, 'x.{"reference_path": "a.png;b.png","mask_strategy": "0;0,1,0,-1,1"}', 18)["prompts"][0]
    assert fixed(p["loops"][0]) == {0: (0, 0), 17: (1, 0)}

    p = explain(workdir, 'x.{"reference_path": "v.mp4","mask_strategy": "0,0,0,-6,6"}', 12)["prompts"][0]
    assert p["references"][0]["frames"] == 8
    assert fixed(p["loops"][0]) == {6 + i: (0, i) for i in range(6)}

    p = explain(workdir, 'x.{"reference_path": "v.mp4","mask_strategy": "0,0,-6,0,6"}', 12)["prompts"][0]
    assert fixed(p["loops"][0]) == {i: (0, 2 + i) for i in range(6)}  # the reference's last 6 of 8

    p = explain(workdir, 'x.{"reference_path": "v.mp4","mask_strategy": "0,0,0,0,7,0.4"}', 7)["prompts"][0]
    assert fixed(p["loops"][0]) == {}
    assert [round(r, 3) for r in p["loops"][0]["edit_ratio"]] == [0.4] * 7


def test_explain_long_video_plan(workdir):
    out = explain(workdir, "|0|a digit|2|another digit", 8, "--loop", "3", "--condition-frame-length", "2")
    assert out["total_frames"] == 8 + 2 * 6
    loops = out["prompts"][0]["loops"]
    assert [lp["text"] for lp in loops] == ["a digit", "a digit", "another digit"]
    assert fixed(loops[1]) == {0: (0, 0), 1: (0, 1)}
    assert loops[1]["sources"][0]["reference"].startswith("previous clip")
    assert loops[1]["output_frames"] == list(range(8, 14)) and loops[2]["output_frames"] == list(range(14, 20))


BAD_INPUTS = [
    (['x{"reference_path": "a.png", "mask_strategy": "0"'], "JSON"),
    (['x{"reference_path": "a.png", "mask": "0"}'], "accepted keys"),
    (['x{"reference_path": "a.png", "mask_strategy": "0,0,0,0,1,0,3"}'], "0,0,0,0,1,0,3"),
    (['x{"reference_path": "a.png", "mask_strategy": "0,zero"}'], "zero"),
    (['x{"reference_path": "a.png", "mask_strategy": "0,1"}'], "ref_id"),
    (['x{"reference_path": "a.png", "mask_strategy": "0,0,0,9"}'], "target_start"),
    (['x{"reference_path": "missing.png", "mask_strategy": "0"}'], "missing.png"),
    (["x", "--mask-strategy", "0"], "reference"),
    (["|0|a|4|b", "--loop", "3"], "loop"),
    (["x", "--loop", "2", "--condition-frame-length", "6"], "condition-frame-length"),
    (["x", "--image-size", "15", "16"], "multiple"),
    (["x", "--ckpt-path", "no/such/folder"], "no/such/folder"),
]


@pytest.mark.parametrize("prompt_args,needle", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_no_output(workdir, prompt_args, needle, tmp_path):
    (workdir / "garbage.mp4").write_bytes(b"not a video")
    save_dir = tmp_path / "out"
    res = run_script(
        "inference-long.py", "--config", str(workdir / "rflow.json"), "--save-dir", str(save_dir),
        "--prompt", *prompt_args, cwd=str(workdir),
    )
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert needle in lines[0], lines[0]
    assert not save_dir.exists() or not os.listdir(save_dir)


def test_unreadable_reference_exits_2(workdir, tmp_path):
    (workdir / "garbage.mp4").write_bytes(b"not a video")
    res = run_script(
        "inference-long.py", "--config", str(workdir / "rflow.json"), "--save-dir", str(tmp_path),
        "--prompt", 'x{"reference_path": "garbage.mp4", "mask_strategy": "0"}', cwd=str(workdir),
    )
    assert res.returncode == 2 and "garbage.mp4" in res.stderr and "Traceback" not in res.stderr


def _pipeline(workdir, sched):
    config = load_config(str(workdir / f"{sched}.json"))
    args = build_parser("t").parse_args(["--prompt", "x", "--config", str(workdir / f"{sched}.json")])
    _, settings = resolve_settings(args)
    return load_pipeline(config, settings)


@pytest.mark.parametrize("sched", ["iddpm", "rflow"])
def test_fixed_frames_end_equal_to_the_reference_latent(workdir, sched):
    pipe = _pipeline(workdir, sched)
    rng = np.random.default_rng(0)
    B, C, T, h, w = 2, 4, 5, 8, 8
    z = paddle.to_tensor(rng.standard_normal([B, C, T, h, w]).astype(np.float32))
    z_ref = paddle.to_tensor(rng.standard_normal([B, C, T, h, w]).astype(np.float32))
    edit_ratio = paddle.to_tensor([[0.0, 1.0, 0.5, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0, 0.0]], dtype="float32")
    y, mask = pipe.encode_text(["the digit 3 moves right", "the digit 8"])
    out = pipe.denoise(z, y, mask, pipe.model_conditions(B, 16, 16, T, 8), N_STEPS, 4.0, rng, z_ref, edit_ratio)
    out, ref = out.numpy(), z_ref.numpy()
    np.testing.assert_array_equal(out[0, :, [0, 4]], ref[0, :, [0, 4]])
    np.testing.assert_array_equal(out[1, :, 4], ref[1, :, 4])
    assert np.abs(out[0, :, 1] - ref[0, :, 1]).max() > 1e-3  # generated frames are not the reference


def test_text_to_video_image_and_loop_outputs(workdir, tmp_path):
    save = tmp_path / "s"
    res = run_script(
        "inference.py", "--config", str(workdir / "iddpm.json"), "--save-dir", str(save), "--prompt", "the digit 3",
        "the digit 5", "--batch-size", "2", cwd=str(workdir),
    )
    assert res.returncode == 0, res.stderr
    paths = [line.split(" ", 1)[1] for line in res.stdout.splitlines() if line.startswith("saved ")]
    assert len(paths) == 2
    for path in paths:
        info = video_info(path)
        assert (info["num_frames"], info["height"], info["width"]) == (6, 16, 16)

    res = run_script(
        "inference.py", "--config", str(workdir / "rflow.json"), "--save-dir", str(save), "--num-frames", "1",
        "--sample-name", "img", "--prompt", "a photo", cwd=str(workdir),
    )
    assert res.returncode == 0, res.stderr
    assert os.path.isfile(save / "img_0000.png") or any(p.endswith(".png") for p in os.listdir(save))

    res = run_script(
        "inference-long.py", "--config", str(workdir / "rflow.json"), "--save-dir", str(save), "--sample-name", "long",
        "--loop", "3", "--condition-frame-length", "2", "--mark-condition-frames",
        "--prompt", 'x{"reference_path": "a.png", "mask_strategy": "0"}', cwd=str(workdir),
    )
    assert res.returncode == 0, res.stderr
    path = [line.split(" ", 1)[1] for line in res.stdout.splitlines() if line.startswith("saved ")][0]
    assert video_info(path)["num_frames"] == 6 + 2 * 4
    assert not [f for f in os.listdir(save) if f.startswith(".") or "tmp" in f]


def _readme_generation_commands():
    """The `python scripts/inference*.py ...` lines of the README (shell-quoted, one per line)."""
    import shlex

    with open(os.path.join(ROOT, "README.md")) as f:
        lines = [line.strip() for line in f]
    commands = []
    for line in lines:
        if "python scripts/inference" in line and not line.startswith("#"):
            text = line[line.index("python scripts/inference") :]
            commands.append(shlex.split(text)[1:])  # drop "python"
    return commands


def test_every_readme_generation_example_runs(workdir, tmp_path):
    """Each README example (t2v, image condition, extend, connect, edit, loop) runs end to end on the
    tiny components (the default model is swapped for them with --config); files are written."""
    commands = _readme_generation_commands()
    assert len(commands) >= 6, commands
    for k, argv in enumerate(commands):
        script, args = argv[0], argv[1:]
        save = tmp_path / f"run{k}"
        res = subprocess.run(
            [sys.executable, os.path.join(ROOT, script), *args, "--config", str(workdir / "rflow.json"),
             "--save-dir", str(save), "--num-sampling-steps", "2", "--image-size", "16", "16"],
            capture_output=True, text=True, cwd=ROOT,
        )
        assert res.returncode == 0, (argv, res.stderr[-2000:])
        saved = [line.split(" ", 1)[1] for line in res.stdout.splitlines() if line.startswith("saved ")]
        assert saved and all(os.path.isfile(p) for p in saved), (argv, res.stdout)


def test_readme_input_files_exist_and_are_not_git_ignored():
    """Every `assets/...` and `configs/...` file the README (or the training log it links,
    docs/default_model.md) names, and every file the README links, is in the checkout and not
    ignored by .gitignore (an ignored example input exists here but is missing from every fresh
    clone)."""
    import re

    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    links = re.findall(r"\]\((?!https?:)([^)#]+)\)", readme)
    assert "docs/default_model.md" in links, links
    with open(os.path.join(ROOT, "docs", "default_model.md")) as f:
        text = readme + f.read()
    names = sorted(set(re.findall(r"(?:assets|configs)/[\w./-]+\.(?:png|mp4|json)", text)) | set(links))
    assert any(n.endswith(".mp4") for n in names) and any(n.endswith(".png") for n in names), names
    missing = [n for n in names if not os.path.isfile(os.path.join(ROOT, n))]
    assert not missing, f"README names files that do not exist: {missing}"
    res = subprocess.run(["git", "check-ignore", *names], capture_output=True, text=True, cwd=ROOT)
    if res.returncode == 128:  # not a git checkout (e.g. an unpacked release): nothing to check against
        pytest.fail(f"git check-ignore failed: {res.stderr.strip()}")
    assert res.stdout.strip() == "", f"README inputs ignored by .gitignore: {res.stdout.split()}"
