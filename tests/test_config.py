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
    ("ltv: {targets: [{name: visits, kind: hurdle_count}]}", r"ltv.targets.0: .*needs max"),
    ("ltv: {targets: [{name: income, kind: lognormal, max: 3}]}",
     r"ltv.targets.0: .*max is for hurdle_count"),
    ("ltv: {targets: [{name: income, kind: gaussian}]}", r"ltv.targets.0.kind"),
    ("ltv: {targets: [{name: a, kind: ziln}, {name: a, kind: lognormal}]}",
     r"ltv.targets: .*repeated: \['a'\]"),
    ("ltv: {targets: []}", "ltv.targets"),
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


# --------------------------------------------------------------------------- the store section


def test_online_store_is_one_class_per_backend_chosen_by_type(tmp_path):
    from scaletot_features.config import (
        PostgresOnlineStoreConfig, RedisOnlineStoreConfig, SqliteOnlineStoreConfig,
    )

    assert isinstance(build_settings("tiny").store.online_store, SqliteOnlineStoreConfig)
    p = tmp_path / "c.yaml"
    p.write_text("store:\n  online_store: {type: redis, connection_string: '10.0.0.2:6380'}\n")
    online = load_settings(p).store.online_store
    assert isinstance(online, RedisOnlineStoreConfig)
    assert online.connection_string == "10.0.0.2:6380"
    p.write_text("store:\n  online_store: {type: postgres, port: 5433}\n")
    online = load_settings(p).store.online_store
    assert isinstance(online, PostgresOnlineStoreConfig)
    assert (online.port, online.host, online.password_env) == (5433, "127.0.0.1",
                                                               "SCALETOT_PG_PASSWORD")


@pytest.mark.parametrize("body, expected", [
    ("online_store: redis\n  redis_connection: '10.0.0.2:6380'",
     {"type": "redis", "connection_string": "10.0.0.2:6380"}),
    ("online_store: redis", {"type": "redis", "connection_string": "127.0.0.1:6379"}),
    ("online_store: postgres\n  postgres: {host: db, port: 5433}",
     {"type": "postgres", "host": "db", "port": 5433}),
    ("online_store: sqlite\n  redis_connection: '10.0.0.2:6380'", {"type": "sqlite"}),
    ("redis_connection: '10.0.0.2:6380'", {"type": "sqlite"}),
])
def test_the_flat_store_keys_of_earlier_versions_still_load(tmp_path, body, expected):
    p = tmp_path / "c.yaml"
    p.write_text("store:\n  " + body + "\n")
    online = load_settings(p).store.online_store.model_dump()
    assert {k: online[k] for k in expected} == expected


@pytest.mark.parametrize("body, needle", [
    ("store: {online_store: mongo}", "store.online_store"),
    ("store: {online_store: {type: redis, host: x}}", "store.online_store.redis.host"),
    ("store: {online_store: {type: sqlite, connection_string: x}}", "store.online_store.sqlite"),
    ("store: {postgres: 3}", "postgres"),
])
def test_bad_store_config_names_the_key(tmp_path, body, needle):
    p = tmp_path / "c.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError, match=needle):
        load_settings(p)


def test_the_resolved_store_section_loads_back(tmp_path):
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text("store: {online_store: redis, redis_connection: 'h:1'}\n")
    dumped = load_settings(p).model_dump(mode="json")
    assert dumped["store"]["online_store"] == {"type": "redis", "connection_string": "h:1"}
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(dumped))
    assert load_settings(again).store == load_settings(p).store

