"""`python run.py --check` end to end."""

from __future__ import annotations

from avatarcam.config import load_config
from avatarcam.selftest import check_vcam, run_self_test
from tests.conftest import D12


def test_check_passes_with_a_working_source(capsys):
    code = run_self_test(load_config(None, {"capture.source": str(D12), "output.vcam": "off"}))
    out = capsys.readouterr().out
    assert code == 0
    assert "OK   camera" in out and "512x512 @ 25 fps" in out
    assert "OK   landmarks" in out and "sha256 ok; face found" in out
    assert "2 of 2 checks passed" in out


def test_check_reports_the_fix_for_each_failure(capsys):
    code = run_self_test(load_config(None, {"capture.source": "9"}))
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL camera" in out and "camera 9 could not be opened" in out and "--source" in out
    assert "OK   landmarks" in out  # still checked, on the sample clip


def test_missing_virtual_camera_gives_the_setup_steps():
    # This machine has no v4l2loopback module: the report must carry the one-time set-up.
    result = check_vcam(load_config(None))
    if result.ok:  # a machine with a real "FaceMimic Camera" device passes instead
        assert "FaceMimic Camera" in result.detail or "/dev/video" in result.detail
        return
    assert "modprobe v4l2loopback" in result.detail and 'card_label="FaceMimic Camera"' in result.detail
    assert "exclusive_caps=1" in result.detail
