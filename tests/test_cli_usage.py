"""Usage mistakes are exit 2 with click's one-line message, never an
"internal error" (typer may raise its own vendored copy of click's
exceptions, which are not click's classes)."""

import pytest
from conftest import run_cli


@pytest.mark.parametrize(
    "args,expect",
    [
        ((), "Usage"),
        (("score", "somewhere/"), "Missing option '--out'"),
        (("score", "--bogus"), "No such option"),
        (("bogus",), "No such command"),
        (("train", "x", "--out", "y", "--steps", "abc"), "--steps"),
    ],
)
def test_usage_errors_exit_2(args, expect):
    proc = run_cli(*args, check=False, timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert expect in text
    assert "nclean: internal error" not in text and "Traceback" not in text


def test_unusable_output_path_is_a_clear_error(tmp_path, shard_dir):
    """A file where a folder is expected: one line naming it, exit 2."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = run_cli("embed", shard_dir, "--out", afile, "--model", "x", check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert str(afile) in proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
