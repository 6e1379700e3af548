"""Bad option values and impossible inputs end as one clear line (exit 2), never a traceback: `--device`,
`--threads`, `--seed` are checked while parsing; a spacing that makes the image larger than any mammogram (or
a speck) is refused before anything is allocated; `screen --out` on a file or a broken folder is an OutputError;
a native decoder's panic (a BaseException) fails only its file."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicom_factory import breast_phantom
from mcgenref_fast.breast_mask import breast_threshold
from mcgenref_fast.canonical import MAX_SIDE_MM, check_extent, to_canonical
from mcgenref_fast.cli import main as cli_main
from mcgenref_fast.commands.options import MAX_SEED, device_arg, positive_int, seed_arg, train_device_arg
from mcgenref_fast.devices import usable_device
from mcgenref_fast.errors import ConfigError, SpacingError
from mcgenref_fast.io import read_mammogram
from mcgenref_fast.screen import runner as screen_runner


def phantom_png(path: Path, shape: tuple[int, int] = (120, 90)) -> Path:
    Image.fromarray((breast_phantom(shape, chest_wall="left", seed=1) // 16).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("argv, message", [
    (["--device", "bogus"], "'bogus' is not a device"),
    (["--device", "meta"], "device type 'meta' is not supported"),
    (["--threads", "0"], "must be at least 1, got 0"),
    (["--threads", "-2"], "must be at least 1, got -2"),
    (["--threads", "two"], "'two' is not a whole number"),
    (["--seed", "-1"], "must be in [0, 2**63 - 1]"),
    (["--seed", str(MAX_SEED + 1)], "must be in [0, 2**63 - 1]"),
])
def test_bad_option_values_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                            message: str) -> None:
    src = phantom_png(tmp_path / "a.png")
    for command in (["segment", str(src), "--spacing", "0.1"], ["eval", "--dataset", "synthetic", str(tmp_path)]):
        if command[0] == "eval" and argv[0] == "--device" and argv[1] == "meta":
            continue
        with pytest.raises(SystemExit) as exit_info:
            cli_main([*command, "--out", str(tmp_path / "out"), *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {argv[0]}: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def _pretend_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """This machine as one with `count` CUDA devices (0: none), for the device check alone."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_option_types_and_the_device_check(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert device_arg("cpu") == "cpu" and train_device_arg("auto") == "auto"
    assert device_arg("cuda:1") == "cuda:1"        # parsed anywhere: `screen --ray` may place it elsewhere
    assert positive_int("3") == 3 and seed_arg("0") == 0 and seed_arg(str(MAX_SEED)) == MAX_SEED
    with pytest.raises(argparse.ArgumentTypeError):
        device_arg("auto")      # only `train` takes auto
    # where the models are placed, the machine must have the device
    assert usable_device("cpu") == torch.device("cpu") == usable_device(torch.device("cpu"))
    with pytest.raises(ConfigError, match="not a device"):
        usable_device("bogus")
    with pytest.raises(ConfigError, match="'meta' is not supported"):
        usable_device("meta")
    _pretend_gpus(monkeypatch, 0)
    with pytest.raises(ConfigError, match=r"^'cuda': CUDA is not available here .*use --device cpu$"):
        usable_device("cuda")
    _pretend_gpus(monkeypatch, 2)
    assert usable_device("cuda:1") == torch.device("cuda:1") and usable_device("cuda") == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"^'cuda:2': this machine has 2 CUDA device\(s\), cuda:0..cuda:1$"):
        usable_device("cuda:2")


def test_a_missing_gpu_is_one_line_from_segment_and_train(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_gpus(monkeypatch, 0)
    src = phantom_png(tmp_path / "a.png")
    assert cli_main(["segment", str(src), "--spacing", "0.1", "--out", str(tmp_path / "o"), "--device", "cuda",
                     "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available here" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()            # stopped before --out was created
    assert cli_main(["train", "generator", "--out", str(tmp_path / "run"), "--steps", "1", "--device", "cuda"]) == 2
    assert "CUDA is not available here" in capsys.readouterr().err
    # the top-hat baseline runs no network: the device does not matter to it (as before the check)
    assert cli_main(["segment", str(src), "--spacing", "0.1", "--out", str(tmp_path / "t"), "--device", "cuda",
                     "--method", "tophat", "--threads", "1"]) == 0


def test_an_extent_no_mammogram_has_is_refused_before_resampling(tmp_path: Path) -> None:
    src = phantom_png(tmp_path / "a.png")          # 120 × 90 px
    with pytest.raises(SpacingError, match=r"90 × 120 px at 10 mm/px is 900 × 1200 mm, larger than any"):
        to_canonical(read_mammogram(src, spacing_mm=10.0))
    with pytest.raises(SpacingError, match="under 4 px at the canonical"):
        to_canonical(read_mammogram(src, spacing_mm=1e-4))
    # the limits themselves: a 600 mm side passes, one pixel more fails
    check_extent((int(MAX_SIDE_MM / 0.5), 10), 0.5, 0.07, "x")
    with pytest.raises(SpacingError):
        check_extent((int(MAX_SIDE_MM / 0.5) + 1, 10), 0.5, 0.07, "x")
    assert to_canonical(read_mammogram(src, spacing_mm=0.2)).image.shape == (343, 257)


def test_cli_reports_a_wrong_spacing_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = phantom_png(tmp_path / "a.png")
    assert cli_main(["segment", str(src), "--spacing", "8", "--out", str(tmp_path / "o"), "--method", "tophat",
                     "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "larger than any mammogram" in err and "check the pixel spacing" in err and "Traceback" not in err


def test_otsu_on_float_noise_around_a_constant_does_not_raise() -> None:
    flat = (1 + 1e-7 * np.random.default_rng(0).standard_normal((64, 64))).astype(np.float32)
    with pytest.raises(ValueError):      # what skimage does with it, the reason for the guard
        from skimage.filters import threshold_otsu
        threshold_otsu(flat)
    t, small, factor = breast_threshold(flat)
    assert np.isfinite(t) and factor == 1 and not (small > t).any()


def test_screen_out_on_a_file_or_a_broken_journal_is_an_output_error(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = phantom_png(tmp_path / "a.png")
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    common = ["--spacing", "0.1", "--method", "tophat", "--threads", "1", "--workers", "0"]
    assert cli_main(["screen", str(src), "--out", str(a_file), *common]) == 2
    err = capsys.readouterr().err
    assert f"{a_file}: cannot use as the output folder" in err and "choose another --out" in err
    out = tmp_path / "out"
    (out / "journal.jsonl").mkdir(parents=True)
    assert cli_main(["screen", str(src), "--out", str(out), *common]) == 2
    err = capsys.readouterr().err
    assert "its journal or index cannot be read or written" in err and "Traceback" not in err


class NativePanic(BaseException):
    """What pyo3 raises when a Rust decoder panics (pyo3_runtime.PanicException derives from BaseException)."""


def test_a_decoder_panic_is_a_failure_of_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mcgenref_fast.io as io_pkg

    src = phantom_png(tmp_path / "a.png")

    def panicking_reader(*args, **kwargs):
        raise NativePanic("index out of bounds")

    monkeypatch.setattr(io_pkg, "read_mammogram", panicking_reader)
    failure = screen_runner.decode_input(str(src), 0.1, False, None)
    assert isinstance(failure, screen_runner.DecodeFailure)
    assert failure.error_type == "NativePanic" and "the decoder failed (index out of bounds)" in failure.message

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io_pkg, "read_mammogram", interrupted)
    with pytest.raises(KeyboardInterrupt):        # Ctrl-C still stops the run
        screen_runner.decode_input(str(src), 0.1, False, None)


def test_warnings_print_as_one_line_naming_the_command(tmp_path: Path) -> None:
    """A warning (here: a spacing outside the usual range) reads `mcgenref segment: warning: ...`, without
    Python's file:line form and the source line under it."""
    import subprocess
    import sys

    src = phantom_png(tmp_path / "a.png")
    proc = subprocess.run([sys.executable, "-m", "mcgenref_fast", "segment", str(src), "--spacing", "0.6", "--out",
                           str(tmp_path / "o"), "--method", "tophat", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert lines and all(line.startswith("mcgenref segment: warning: ") for line in lines), proc.stderr
    assert "UserWarning" not in proc.stderr and "read_mammogram(" not in proc.stderr


def test_the_warning_format_is_put_back_after_an_in_process_call(tmp_path: Path) -> None:
    import warnings

    before = warnings.formatwarning
    cli_main(["segment", str(phantom_png(tmp_path / "a.png")), "--spacing", "0.1", "--out", str(tmp_path / "o"),
              "--method", "tophat", "--threads", "1"])
    assert warnings.formatwarning is before


def test_segment_refuses_an_unwritable_out_before_any_analysis(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from mcgenref_fast.commands import segment

    src = phantom_png(tmp_path / "a.png")
    taken = tmp_path / "taken"
    taken.write_text("x")
    built = []
    real = segment.engine_from_args
    monkeypatch.setattr(segment, "engine_from_args", lambda args: built.append(args) or real(args))
    assert cli_main(["segment", str(src), "--spacing", "0.1", "--out", str(taken), "--method", "tophat",
                     "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{taken}: cannot write outputs there" in err and "choose another --out" in err
    assert built == []                 # refused before the engine (networks) was even built
    assert cli_main(["segment", str(src), "--spacing", "0.1", "--out", str(tmp_path / "ok"), "--method", "tophat",
                     "--threads", "1"]) == 0
    assert len(built) == 1 and not list((tmp_path / "ok").glob(".write-probe-*"))
