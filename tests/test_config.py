"""The saved pruning configuration: one place for its defaults, validated on write and on read."""

import json

import pytest

from conftest import make_tiny_resnet
from sinf_core.bundle import MANIFEST, Bundle, read_config, state_dict_sha256
from sinf_core.config import DEFAULT_CONFIG, FILLS, MODES, default_config, validate_config
from sinf_core.errors import SinfError


def test_defaults_fill_in_and_values_come_back_clean():
    assert validate_config({}) == DEFAULT_CONFIG
    assert DEFAULT_CONFIG == {"method": "dcs", "r_M": 0.05, "r_L": 0.5, "overrides": {}, "fill": "mean", "bn": True,
                              "gamma": 0.5, "tau": 1.0}
    cfg = validate_config({"r_M": 0, "r_L": 0.95, "overrides": {"k1": (0, 0.1)}, "fill": "zero", "bn": False,
                           "gamma": 1, "tau": 0.0, "tap": "layer2", "mode": "cascade", "multiple_of": 8})
    assert cfg == {"method": "dcs", "r_M": 0.0, "r_L": 0.95, "overrides": {"k1": [0.0, 0.1]}, "fill": "zero",
                   "bn": False, "gamma": 1.0, "tau": 0.0, "tap": "layer2", "mode": "cascade", "multiple_of": 8}
    assert isinstance(cfg["r_M"], float) and isinstance(cfg["gamma"], float)
    assert validate_config({"multiple_of": None, "tap": None})["multiple_of"] is None
    assert "tap" not in validate_config({})  # optional keys only when given
    d = default_config()
    d["overrides"]["x"] = [0.1, 0.2]
    assert DEFAULT_CONFIG["overrides"] == {}  # a copy


def test_constants_match_the_modules_that_use_them():
    from sinf_core.engine import MODES as ENGINE_MODES
    from sinf_core.subgraph import FILLS as SUBGRAPH_FILLS

    assert MODES == ENGINE_MODES and FILLS == SUBGRAPH_FILLS


@pytest.mark.parametrize("bad,message", [
    ({"r_m": 0.1}, "where: unknown key 'r_m' (value 0.1); the keys are method, r_M, r_L"),
    ({"r_M": "0.1"}, "where: r_M must be a number in [0, 0.95], got '0.1'"),
    ({"r_M": True}, "where: r_M must be a number in [0, 0.95], got True"),
    ({"r_L": 0.99}, "where: r_L must be a number in [0, 0.95], got 0.99"),
    ({"r_L": -0.1}, "where: r_L must be a number in [0, 0.95], got -0.1"),
    ({"r_L": float("nan")}, "where: r_L must be a number in [0, 0.95], got nan"),
    ({"gamma": 1.5}, "where: gamma must be a number in [0, 1], got 1.5"),
    ({"tau": None}, "where: tau must be a number in [0, 1], got None"),
    ({"method": 3}, "where: method must be the name of a filter score (a string), got 3"),
    ({"fill": "median"}, "where: fill must be one of 'mean', 'zero', got 'median'"),
    ({"bn": "yes"}, "where: bn must be true or false, got 'yes'"),
    ({"bn": 1}, "where: bn must be true or false, got 1"),
    ({"overrides": [0.1, 0.2]}, "where: overrides must be an object {cluster name: [r_M, r_L]}, got [0.1, 0.2]"),
    ({"overrides": {"k1": 0.3}}, "where: overrides['k1'] must be a pair [r_M, r_L], got 0.3"),
    ({"overrides": {"k1": [0.1, 2]}}, "where: overrides['k1'] r_L must be a number in [0, 0.95], got 2"),
    ({"overrides": {"k1": [False, 0.2]}}, "where: overrides['k1'] r_M must be a number in [0, 0.95], got False"),
    ({"tap": 3}, "where: tap must be the name of a unit (a string) or null, got 3"),
    ({"mode": "fast"}, "where: mode must be one of 'sinf', 'exit', 'cascade', got 'fast'"),
    ({"multiple_of": 0}, "where: multiple_of must be an integer >= 1 or null, got 0"),
    ({"multiple_of": 8.0}, "where: multiple_of must be an integer >= 1 or null, got 8.0"),
    ({"multiple_of": True}, "where: multiple_of must be an integer >= 1 or null, got True"),
])
def test_bad_values_name_where_the_key_and_the_value(bad, message):
    with pytest.raises(SinfError) as e:
        validate_config(bad, "where")
    assert str(e.value).startswith(message), str(e.value)


def test_not_an_object():
    with pytest.raises(SinfError, match=r"^config: a configuration must be an object of settings, got list \[1\]"):
        validate_config([1])


def _bundle(tmp_path) -> Bundle:
    model = make_tiny_resnet()
    return Bundle.open_or_create(tmp_path / "b", "tiny", state_dict_sha256(model))


def test_bundle_put_refuses_a_bad_config_and_writes_nothing(tmp_path):
    b = _bundle(tmp_path)
    before = (b.root / MANIFEST).read_text()
    with pytest.raises(SinfError) as e:
        b.put("config", {"config.json": {**DEFAULT_CONFIG, "r_M": "lots"}})
    assert str(e.value) == f"{b.root / 'config.json'}: r_M must be a number in [0, 0.95], got 'lots'"
    with pytest.raises(SinfError, match="not valid JSON"):
        b.put("config", {"config.json": b"{not json"})
    assert not (b.root / "config.json").exists()
    assert (b.root / MANIFEST).read_text() == before and not b.has("config")
    assert sorted(p.name for p in b.root.iterdir()) == [MANIFEST]


def test_bundle_put_stores_the_clean_config_and_read_config_returns_it(tmp_path):
    b = _bundle(tmp_path)
    assert read_config(b) == DEFAULT_CONFIG  # nothing saved yet
    b.put("config", {"config.json": {"r_M": 0.3, "r_L": 0.9, "overrides": {"k1": (0.0, 0.1)}, "tap": "layer2"}})
    saved = json.loads((b.root / "config.json").read_text())
    assert saved == {**DEFAULT_CONFIG, "r_M": 0.3, "r_L": 0.9, "overrides": {"k1": [0.0, 0.1]}, "tap": "layer2"}
    assert read_config(b) == saved == read_config(b.root) == Bundle.open(b.root).config()


def test_read_config_refuses_a_hand_edited_file(tmp_path):
    b = _bundle(tmp_path)
    b.put("config", {"config.json": {}})
    path = b.root / "config.json"
    path.write_text(json.dumps({**DEFAULT_CONFIG, "gamma": "high"}))
    with pytest.raises(SinfError) as e:
        read_config(b)
    assert str(e.value) == f"{path}: gamma must be a number in [0, 1], got 'high'"
