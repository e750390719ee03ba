"""watcher/guard_proxy.py decides without an engine: what it forwards, what it refuses (the
real-engine checks, bypass bodies included, are in tests/integration/test_deploy.py)."""

from __future__ import annotations

from typing import Any

import pytest

from watcher.guard_proxy import Guard, Refused, parse_selectors

LABELLED = "a" * 64
OTHER = "b" * 64
CONTAINERS: dict[str, dict[str, Any]] = {
    "tfs-1": {"Id": LABELLED, "Config": {"Labels": {"watcher.enable": "true"}}},
    "lb": {"Id": OTHER, "Config": {"Labels": {"watcher.enable": "false"}}},
}


def guard() -> Guard:
    return Guard(parse_selectors(["watcher.enable=true"]), CONTAINERS.get)


def refused(method: str, target: str, headers: list[tuple[str, str]] | None = None) -> int:
    with pytest.raises(Refused) as exc:
        guard().decide(method, target, headers or [])
    return exc.value.status


def test_forwards_per_container_calls_by_full_id_with_only_checked_query() -> None:
    g = guard()
    assert g.decide("POST", "/v1.41/containers/tfs-1/restart?t=10", [("Content-Length", "0")]).target == (
        f"/v1.41/containers/{LABELLED}/restart?t=10"
    )
    assert g.decide("POST", "/containers/tfs-1/kill?signal=HUP", []).target == f"/containers/{LABELLED}/kill?signal=HUP"
    assert g.decide("GET", "/v1.41/containers/json?all=1&filters=%7B%7D", []).target == (
        "/v1.41/containers/json?all=1&filters=%7B%7D"
    )


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/containers/lb/json", []),  # no allowed label
        ("POST", "/containers/lb/restart", []),
        ("POST", "/containers/tfs-1/exec", [("Content-Length", "24")]),  # exec is not on the list
        ("POST", "/containers/tfs-1/exec", []),
        ("POST", "/containers/tfs-1/kill?signal=KILL", []),
        ("POST", "/containers/tfs-1/kill", []),
        ("POST", "/containers/tfs-1/kill?signal=HUP&signal=KILL", []),
        ("POST", "/containers/tfs-1/kill?signal=HUP;signal=KILL", []),
        ("POST", "/containers/tfs-1/restart?t=1&signal=KILL", []),
        ("POST", "/containers/tfs-1/restart?t=-1", []),
        ("POST", "/containers/tfs-1/restart", [("Content-Length", "2")]),
        ("POST", "/containers/tfs-1/restart", [("Content-Length", "0"), ("Content-Length", "5")]),
        ("POST", "/containers/tfs-1/restart", [("Transfer-Encoding", "chunked")]),
        ("GET", "/containers/tfs-1/json", [("Connection", "Upgrade"), ("Upgrade", "tcp")]),
        ("GET", "/containers/tfs-1/top?ps_args=eww", []),
        ("GET", "/containers/tfs-1/../lb/json", []),
        ("GET", "/containers/%74fs-1/json", []),
        ("GET", "http://docker/containers/tfs-1/json", []),
        ("POST", "/containers/tfs-1/attach?stream=1", []),
        ("POST", "/containers/create", []),
        ("DELETE", "/containers/tfs-1", []),
        ("GET", "/info", []),
    ],
)
def test_refuses(method: str, target: str, headers: list[tuple[str, str]]) -> None:
    assert refused(method, target, headers) == 403


def test_an_unknown_container_is_not_found() -> None:
    assert refused("GET", "/containers/nope/json") == 404


def test_selectors_need_key_and_value() -> None:
    with pytest.raises(ValueError, match="key=value"):
        parse_selectors(["watcher.enable"])
    with pytest.raises(ValueError, match="at least one"):
        parse_selectors([])


def test_a_selector_needs_all_its_labels_like_dockers_label_filter() -> None:
    """``--allow-label watcher.enable=true,team=ml``: a container with only one of the two labels (a
    stray ``watcher.enable=true`` on someone else's container) may not be restarted or signalled."""
    containers: dict[str, dict[str, Any]] = {
        "ours": {"Id": LABELLED, "Config": {"Labels": {"watcher.enable": "true", "team": "ml"}}},
        "half": {"Id": OTHER, "Config": {"Labels": {"watcher.enable": "true"}}},
        "lb": {"Id": "c" * 64, "Config": {"Labels": {"watcher.role": "load-balancer"}}},
    }
    g = Guard(parse_selectors(["watcher.enable=true,team=ml", "watcher.role=load-balancer"]), containers.get)
    assert g.decide("POST", "/containers/ours/restart?t=5", []).target == f"/containers/{LABELLED}/restart?t=5"
    assert g.decide("POST", "/containers/lb/kill?signal=HUP", []).target == f"/containers/{'c' * 64}/kill?signal=HUP"
    for method, target in [("POST", "/containers/half/restart"), ("POST", "/containers/half/kill?signal=HUP")]:
        with pytest.raises(Refused, match=r"does not carry watcher\.enable=true,team=ml or watcher\.role"):
            g.decide(method, target, [])


def test_selector_pairs_each_need_a_key_and_value() -> None:
    assert parse_selectors(["a=1, b=2", "c="]) == ((("a", "1"), ("b", "2")), (("c", ""),))
    with pytest.raises(ValueError, match="key=value"):
        parse_selectors(["a=1,b"])
