"""`optidel eval`'s settings: one pydantic section whose defaults, choices and ranges the CLI's
flags are built from."""

from __future__ import annotations

import argparse
from dataclasses import asdict, fields, replace

import pytest
from pydantic import ValidationError

from optidel.eval import command
from optidel.eval.settings import EvalConfig
from optidel.pipeline import cli


def _parsed(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(["--labeled", "L", *flags])


def test_flag_defaults_are_the_settings_defaults():
    args = _parsed()
    for f in fields(EvalConfig):
        if f.name == "split":
            assert args.split is None  # follows --test-only when unset
        elif f.name not in command._NOT_FLAGS:
            assert getattr(args, f.name) == getattr(EvalConfig(), f.name), f.name
    args.split = "validation"
    assert command.settings_from(args) == EvalConfig()


def test_ranges_and_choices_are_checked_in_one_place():
    with pytest.raises(ValidationError, match="seeds"):
        EvalConfig(seeds=0)
    with pytest.raises(ValidationError, match="device"):
        replace(EvalConfig(), device="tpu")
    with pytest.raises(ValidationError, match="Unexpected keyword argument"):
        EvalConfig(sedes=3)
    assert asdict(replace(EvalConfig(), seeds=2))["seeds"] == 2


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--seeds", "0"], "--seeds 0: Input should be greater than or equal to 1"),
        (["--threads", "-1"], "--threads -1: Input should be greater than or equal to 0"),
        (["--probe-l2", "-0.5"], "--probe-l2 -0.5: Input should be greater than or equal to 0"),
    ],
)
def test_out_of_range_flag_is_a_one_line_error(flag, message, tmp_path, capsys):
    assert cli.main(["eval", "--labeled", str(tmp_path), "--out", str(tmp_path / "out"), *flag]) == 2
    assert capsys.readouterr().err == f"optidel: error: {message}\n"


def test_choices_come_from_the_settings(capsys):
    with pytest.raises(SystemExit):
        _parsed("--model", "huge")
    assert "argument --model: invalid choice: 'huge'" in capsys.readouterr().err
