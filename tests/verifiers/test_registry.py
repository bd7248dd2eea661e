import subprocess
import sys
import textwrap

import pytest

from posttrain.verifiers import (
    UnknownVerifierError,
    VerifierResult,
    available_verifiers,
    call_verifier,
    get_verifier,
    register_verifier,
)


def test_builtins_listed():
    names = available_verifiers()
    for n in ("gsm8k", "math", "string_match", "f1", "max_length", "up_to_max_length", "code"):
        assert n in names


def test_register_and_normalize():
    @register_verifier("test_reg_half")
    def half(response, ground_truth, prompt=None):
        return 0.5, "half"

    assert get_verifier("test_reg_half") is half
    assert "test_reg_half" in available_verifiers()
    assert call_verifier(half, "x", None) == VerifierResult(0.5, "half")
    assert call_verifier(lambda r, g, prompt=None: True, "x", None) == VerifierResult(1.0, None)
    with pytest.raises(ValueError):
        call_verifier(lambda r, g, prompt=None: 1.5, "x", None)
    with pytest.raises(ValueError):
        call_verifier(lambda r, g, prompt=None: float("nan"), "x", None)


def test_unknown_name_is_one_line_and_lists_known():
    with pytest.raises(UnknownVerifierError) as ei:
        get_verifier("no_such_verifier")
    msg = str(ei.value)
    assert "\n" not in msg and "gsm8k" in msg and "no_such_verifier" in msg
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, ValueError)
    with pytest.raises(UnknownVerifierError):
        get_verifier("no_such_module_xyz:fn")


def test_module_object_path(tmp_path):
    (tmp_path / "my_plugin_mod.py").write_text(textwrap.dedent("""
        def is_yes(response, ground_truth, prompt=None):
            return float(response.strip().lower() == "yes")
    """))
    code = textwrap.dedent("""
        from posttrain.verifiers import get_verifier, score_rows
        fn = get_verifier("my_plugin_mod:is_yes")
        assert fn("yes", None) == 1.0
        rows = [{"response": r, "dataset": "my_plugin_mod:is_yes", "ground_truth": None} for r in ("yes", "no")]
        print([r.score for r in score_rows(rows, workers=2)])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1.0, 0.0]"


def test_ifeval_registered_lazily():
    # Owned by another module; whether it is importable or not, the lookup answers cleanly.
    try:
        fn = get_verifier("ifeval")
    except UnknownVerifierError as e:  # VerifierLoadError while the module is missing
        assert "\n" not in str(e)
    else:
        assert callable(fn)
