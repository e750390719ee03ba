"""Integration fixtures: a real Docker engine, images built once per session."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from testbed.images import ensure_images

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    subprocess.run([str(REPO / "scripts" / "ensure-docker.sh")], check=True)
    client = docker.from_env()
    ensure_images(client)
    return client


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # loopback only, never through a proxy
    yield session
    session.close()
