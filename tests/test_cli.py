"""The command line's user errors, global flags, --version and `optidel config`.

Every user error is one line on stderr naming the thing, exit 2, raised before torch or Ray is
imported and before OUT is created. The error cases run in one child process (a fresh
interpreter, so that what was imported is the CLI's doing), which records after each case its
exit code, its stderr and the heavy modules loaded so far."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from optidel import __version__
from optidel.pipeline import cli
from optidel.pipeline import config as config_mod

CHILD = """
import contextlib, io, json, sys
from optidel.pipeline.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    results.append({"code": code, "stderr": err.getvalue(), "imported": [m for m in ("torch", "ray") if m in sys.modules]})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """A pool with one image, a directory that is no optidel output, an unfinished run's OUT."""
    root = tmp_path_factory.mktemp("cli")
    (root / "pool").mkdir()
    (root / "pool" / "a.jpg").write_bytes(b"")  # never read: every case fails before
    (root / "notout").mkdir()
    (root / "notout" / "notes.txt").write_text("mine")
    (root / "unfinished" / "work").mkdir(parents=True)
    (root / "unfinished" / "work" / "job.json").write_text("{}")
    (root / "bad.yaml").write_text("select:\n  clusterz: 3\n")
    return root


ERRORS = {
    "inspect a missing OUT": (["inspect", "gone", "k"], "gone: no such directory"),
    "verify a missing OUT": (["verify", "gone"], "gone: no such directory"),
    "report a missing OUT": (["report", "gone"], "gone: no such directory"),
    "inspect a non-optidel OUT": (["inspect", "notout", "k"], "notout: not an optidel output"),
    "verify a non-optidel OUT": (["verify", "notout"], "notout: not an optidel output"),
    "report a non-optidel OUT": (["report", "notout"], "notout: not an optidel output"),
    "verify an unfinished run": (["verify", "unfinished"], "unfinished: an unfinished optidel run"),
    "missing input": (["run", "nopool", "-o", "out"], "input nopool: does not exist"),
    "bad flag after the command": (["run", "pool", "-o", "out", "--quiet", "--bogus"], "unrecognized arguments: --bogus"),
    "bad mosaic": (["run", "pool", "-o", "out", "--mosaic", "5"], "--mosaic must be 1, 4, 9 or 16"),
    "bad keep": (["run", "pool", "-o", "out", "--keep", "0"], "--keep should be greater than 0"),
    "bad seed": (["run", "pool", "-o", "out", "--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
    "bad --set value": (["run", "pool", "-o", "out", "--set", "select.clusters=0"], "--set select.clusters should be"),
    "unknown --set key": (["run", "pool", "-o", "out", "--set", "select.clusterz=3"], "--set select.clusterz: unknown key"),
    "unknown key in a file": (["run", "pool", "-o", "out", "--config", "bad.yaml"], "bad.yaml: select.clusterz: unknown key"),
    "missing config file": (["run", "pool", "-o", "out", "--config", "nofile.yaml"], "nofile.yaml: cannot read config"),
    "bad --set to config": (["config", "--set", "mosaic=2"], "--set mosaic must be 1, 4, 9 or 16"),
}


@pytest.fixture(scope="module")
def outcomes(places):
    cases = [args for args, _ in ERRORS.values()]
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], cwd=places, capture_output=True,
                          text=True, timeout=120, check=True)
    return dict(zip(ERRORS, json.loads(done.stdout.splitlines()[-1])))


@pytest.mark.parametrize("case", ERRORS, ids=list(ERRORS))
def test_user_error_is_one_line_exit_2_before_torch_and_out(places, outcomes, case):
    _, expected = ERRORS[case]
    got = outcomes[case]
    assert got["code"] == 2, got
    assert got["stderr"].count("\n") == 1 and got["stderr"].startswith("optidel"), got
    assert expected in got["stderr"]
    assert got["imported"] == []  # neither torch nor Ray, by this case or any before it
    assert not (places / "out").exists()


def test_version():
    done = subprocess.run([sys.executable, "-m", "optidel.pipeline.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == f"optidel {__version__}\n"


@pytest.mark.parametrize(
    "argv", [["--quiet", "--log-level", "ERROR", "verify", "o"], ["verify", "o", "--quiet", "--log-level", "ERROR"]]
)
def test_global_flags_before_or_after_the_command(argv):
    args = cli._parser().parse_args(argv)
    assert (args.quiet, args.verbose, args.log_level, args.out) == (True, False, "ERROR", "o")


def test_global_flags_left_out_after_the_command_keep_their_defaults():
    args = cli._parser().parse_args(["run", "pool", "-o", "o"])
    assert (args.quiet, args.verbose, args.log_level) == (False, False, "INFO")
    assert cli._log_level(cli._parser().parse_args(["demo", "o", "--verbose"])) == 10  # DEBUG


def test_config_defaults_round_trip_through_config(tmp_path, capsys):
    assert cli.main(["config", "--defaults"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "defaults.yaml").write_text(text)
    assert config_mod.load(tmp_path / "defaults.yaml") == config_mod.load()
    # Every key, sections included, comes after its description.
    lines = text.splitlines()
    keys = [i for i, line in enumerate(lines) if not line.lstrip().startswith("#")]
    assert len(keys) > 60 and all(lines[i - 1].lstrip().startswith("# ") for i in keys)
    assert "# M patches per output image: 1, 4, 9 or 16\nmosaic: 4\n" in text


def test_config_prints_the_resolved_config(tmp_path, capsys):
    (tmp_path / "mine.yaml").write_text("keep: 0.2\n")
    assert cli.main(["config", "--config", str(tmp_path / "mine.yaml"), "--mosaic", "9", "--set", "select.clusters=8"]) == 0
    (tmp_path / "resolved.yaml").write_text(capsys.readouterr().out)
    resolved = config_mod.load(tmp_path / "resolved.yaml")
    assert (resolved.keep, resolved.mosaic, resolved.select.clusters) == (0.2, 9, 8)


def test_every_config_flag_and_help_points_to_the_config_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "optidel config --defaults" in text
    for key, (flag, _) in cli.CONFIG_FLAGS.items():
        if flag != "--ray-address":  # its help names RAY_ADDRESS, not the key's description
            assert f"{' '.join(config_mod.description(key).split())}" in text, flag
