"""``haproxy_backend`` is a command argument on HAProxy's runtime API: a name HAProxy could not have
is refused when the configuration loads, as one `setting: problem` line, not at the first drain."""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher.config import ConfigError, load_settings


@pytest.mark.parametrize("name", ["m; disable server m/a", "m\nshow info", "m x", "m/a", "m#"])
def test_a_backend_name_haproxy_could_not_have_is_a_configuration_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides={"lb": "haproxy", "haproxy_backend": name})
    [line] = str(caught.value).splitlines()
    assert line.startswith("haproxy_backend: ") and "HAProxy backend name" in line


@pytest.mark.parametrize("name", ["", "m", "be_models-1.v2:x"])
def test_names_haproxy_allows_load(name: str) -> None:
    assert load_settings(overrides={"haproxy_backend": name}).haproxy_backend == name
