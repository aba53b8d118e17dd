"""config.yaml parsing, validation and the shipped file."""

from __future__ import annotations

import pytest

from avatarcam.config import Config, default_config_yaml, documented_keys, load_config, parse_override
from avatarcam.errors import ConfigError
from tests.conftest import ROOT


def test_shipped_config_equals_defaults_and_documents_every_key():
    text = (ROOT / "config.yaml").read_text()
    assert text == default_config_yaml(), "config.yaml is stale: regenerate it (command at its top)"
    assert load_config(ROOT / "config.yaml") == Config()
    keys = documented_keys()
    assert len(keys) > 40
    for key, _default, _allowed, doc in keys:
        assert doc, f"{key} has no description"
        assert f"{key.split('.')[-1]}:" in text


def test_overrides_reach_nested_sections():
    config = load_config(None, {"capture.source": "clip.mp4", "motion.intensity.mouth": 1.5, "vcam.fit": "fill"})
    assert config.capture.source == "clip.mp4"
    assert config.motion.intensity.mouth == 1.5
    assert config.vcam.fit == "fill"


@pytest.mark.parametrize(
    "override, words",
    [
        ({"capture.sorce": "0"}, ["unknown config key capture.sorce", "source"]),
        ({"motion.smoothing": 3}, ["motion.smoothing = 3", "0.0 to 1.0"]),
        ({"generator.model": "gan"}, ["generator.model = 'gan'", "'mesh', 'fomm'"]),
        ({"capture.mirror": "maybe"}, ["capture.mirror = 'maybe'", "bool"]),
        ({"generator.canvas_size": 500}, ["generator.canvas_size = 500", "512"]),
        ({"nonsense": 1}, ["unknown config key nonsense", "capture"]),
        ({"motion.intensity": 2}, ["motion.intensity", "mapping"]),
    ],
)
def test_bad_values_name_the_key_and_the_allowed_values(override, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, override)
    for word in words:
        assert word in str(info.value)


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("capture: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("motion:\n  smoothing: 0.7\n  intensity: {eyes: 0.5}\n")
    config = load_config(good, {"motion.smoothing": 0.2})
    assert config.motion.smoothing == 0.2  # the command line wins over the file
    assert config.motion.intensity.eyes == 0.5


def test_set_override_parsing():
    assert parse_override("motion.smoothing=0.5") == ("motion.smoothing", 0.5)
    assert parse_override("capture.mirror=false") == ("capture.mirror", False)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("motion.smoothing")


def test_yaml_on_off_words_work_for_switch_keys():
    config = load_config(None, {"output.preview": parse_override("output.preview=on")[1],
                                "output.vcam": parse_override("output.vcam=off")[1]})
    assert (config.output.preview, config.output.vcam) == ("on", "off")
