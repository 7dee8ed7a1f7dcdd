"""The `saeuron` command line: useful output, and one clear line (exit 2) for bad input."""

import subprocess
import sys

import pytest
from PIL import Image


def run(*args, cwd=None):
    cmd = [sys.executable, "-m", "saeuron_core.cli", "--threads", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(proc, fragment):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("saeuron")]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_help_lists_subcommands():
    out = run("--help").stdout
    assert "build-model" in out and "generate" in out
    assert "--guidance" in run("generate", "--help").stdout


@pytest.mark.slow
def test_generate_single_image_and_grid(tiny_pipeline_dir, tmp_path):
    one = tmp_path / "one.png"
    proc = run(
        "generate",
        "--model",
        str(tiny_pipeline_dir),
        "--object",
        "star",
        "--style",
        "dots",
        "--steps",
        "2",
        "--out",
        str(one),
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(one).size == (16, 16)
    grid = tmp_path / "grid.png"
    proc = run(
        "generate",
        "--model",
        str(tiny_pipeline_dir),
        "--prompt",
        "a",
        "--prompt",
        "b",
        "--seed",
        "1",
        "--seed",
        "2",
        "--seed",
        "3",
        "--steps",
        "1",
        "--out",
        str(grid),
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(grid).size == (48, 32)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "nonexistent-model", "--prompt", "x"], "unknown model spec"),
        (["--object", "dog"], "unknown object 'dog'"),
        (["--object", "star", "--style", "vangogh"], "unknown style 'vangogh'"),
        (["--prompt", "   "], "empty prompt"),
        (["--prompt", "x", "--steps", "0"], "steps must be a positive integer"),
    ],
)
@pytest.mark.slow
def test_bad_input_is_one_clear_line(args, fragment, tiny_pipeline_dir, tmp_path):
    if "--model" not in args:
        args = ["--model", str(tiny_pipeline_dir), *args]
    proc = run("generate", *args, "--out", str(tmp_path / "x.png"))
    assert_one_line_error(proc, fragment)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_folder_that_is_not_a_pipeline(tmp_path):
    proc = run("generate", "--model", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "x.png"))
    assert_one_line_error(proc, "not a diffusers pipeline folder")


@pytest.mark.slow
def test_unwritable_output_leaves_nothing_behind(tiny_pipeline_dir, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    proc = run(
        "generate",
        "--model",
        str(tiny_pipeline_dir),
        "--prompt",
        "x",
        "--steps",
        "1",
        "--out",
        str(blocker / "img.png"),
    )
    assert_one_line_error(proc, "cannot create folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
    bad_ext = run(
        "generate",
        "--model",
        str(tiny_pipeline_dir),
        "--prompt",
        "x",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "img.unknown"),
    )
    assert_one_line_error(bad_ext, "cannot tell the image format")


def test_written_files_get_normal_permissions(tmp_path):
    import os

    from saeuron_core.io import write_json

    write_json(tmp_path / "a.json", {"x": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
