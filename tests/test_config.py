import pytest

from scaletot_features.config import ConfigError, PRESETS, build_settings, load_settings


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds(preset):
    s = build_settings(preset)
    assert s.preset == preset
    assert s.taxonomy().type_names and s.profile_schema().names


def test_presets_are_ordered_by_size():
    sizes = [build_settings(p).generate.users for p in ("tiny", "demo", "full")]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_yaml_overrides_a_preset(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("preset: tiny\ngenerate: {users: 123}\nteacher: {tau: 0.5}\n")
    s = load_settings(p)
    assert s.preset == "tiny" and s.generate.users == 123 and s.teacher.tau == 0.5
    assert s.generate.chunk_size == PRESETS["tiny"]["generate"]["chunk_size"]


@pytest.mark.parametrize("body, needle", [
    ("generate: {users: -5}", "generate.users"),
    ("teacher: {tau: 2}", "teacher.tau"),
    ("teacher: {scoring: psychic}", "teacher.scoring"),
    ("genrate: {users: 5}", "genrate"),
    ("preset: huge", "preset"),
    ("- a list", "expected a mapping"),
    ("generate: {users: [", "not valid YAML"),
    ("data: {profile_fields: [{name: x, kind: categorical, label: x}]}", "domain"),
])
def test_bad_config_names_the_key(tmp_path, body, needle):
    p = tmp_path / "c.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError, match=needle) as e:
        load_settings(p)
    assert str(p) in str(e.value)


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml")


def test_own_profile_fields_replace_the_default(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  profile_fields:\n"
                 "    - {name: plan, kind: categorical, label: plan, required: true, domain: [free, pro]}\n"
                 "    - {name: bio, kind: text, label: bio}\n")
    schema = load_settings(p).profile_schema()
    assert schema.names == ["plan", "bio"]
