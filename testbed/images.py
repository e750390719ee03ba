"""Container images for the testbed, built without a registry.

No registry is reachable where the project is tested, so the base image is a Debian root file
system made by ``mmdebstrap`` and brought in with ``docker import``; the simulator image is a
``docker build`` on top of it. Every tag is a hash of the image's inputs, so an unchanged image
is never rebuilt and a changed input can never be served by a stale image.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import ImageNotFound

REPO_ROOT = Path(__file__).resolve().parents[1]
SIMULATOR_DIR = REPO_ROOT / "testbed" / "simulator"

BASE_REPOSITORY = "serving-watcher/base"
SIMULATOR_REPOSITORY = "serving-watcher/tfsim"
OIP_REPOSITORY = "serving-watcher/oip"  # real MLServer and KServe, the testbed's model and its faults
SERVERS_DIR = REPO_ROOT / "testbed" / "servers"
OIP_REQUIREMENTS = SERVERS_DIR / "requirements.txt"
OIP_WHEELHOUSE = REPO_ROOT / "build" / "oip-wheels"  # filled by scripts/install-oip-servers.sh

# Inputs of the base image. Changing any of them changes the tag.
BASE_SUITE = "bookworm"
BASE_VARIANT = "minbase"
BASE_PACKAGES = ("python3", "curl", "ca-certificates")
BASE_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")


class ImageBuildError(RuntimeError):
    """An image could not be built; the message says which step failed and why."""


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:16]


def base_tag() -> str:
    spec = [BASE_SUITE, BASE_VARIANT, *BASE_PACKAGES, *BASE_EXCLUDES]
    return f"{BASE_REPOSITORY}:{_digest([s.encode() for s in spec])}"


def simulator_tag() -> str:
    files = sorted(p for p in SIMULATOR_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    parts = [base_tag().encode()]
    for path in files:
        parts.append(str(path.relative_to(SIMULATOR_DIR)).encode())
        parts.append(path.read_bytes())
    return f"{SIMULATOR_REPOSITORY}:{_digest(parts)}"


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    built: bool  # False when an image with this tag already existed


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


def ensure_base_image(client: docker.DockerClient) -> BuiltImage:
    tag = base_tag()
    if _exists(client, tag):
        return BuiltImage(tag, built=False)
    if shutil.which("mmdebstrap") is None:
        raise ImageBuildError("mmdebstrap is not installed (Debian package 'mmdebstrap'); run make setup")
    with tempfile.TemporaryDirectory(prefix="watcher-base-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        cmd = [
            "mmdebstrap",
            f"--variant={BASE_VARIANT}",
            f"--include={','.join(BASE_PACKAGES)}",
            *[f"--dpkgopt=path-exclude={pattern}" for pattern in BASE_EXCLUDES],
            "--format=tar",
            BASE_SUITE,
            str(tarball),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.splitlines()[-20:])
            raise ImageBuildError(f"mmdebstrap failed (exit {proc.returncode}):\n{tail}")
        repository, _, version = tag.partition(":")
        client.api.import_image_from_file(str(tarball), repository=repository, tag=version)
    if not _exists(client, tag):
        raise ImageBuildError(f"docker import did not produce {tag}")
    return BuiltImage(tag, built=True)


def ensure_simulator_image(client: docker.DockerClient) -> BuiltImage:
    base = ensure_base_image(client)
    tag = simulator_tag()
    if _exists(client, tag):
        return BuiltImage(tag, built=False)
    try:
        client.images.build(
            path=str(SIMULATOR_DIR),
            tag=tag,
            buildargs={"BASE": base.tag},
            network_mode="none",
            rm=True,
            forcerm=True,
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log)
        raise ImageBuildError(f"docker build of {tag} failed: {exc.msg}\n{log[-2000:]}") from exc
    return BuiltImage(tag, built=True)


def oip_requirements() -> list[str]:
    return [line.strip() for line in OIP_REQUIREMENTS.read_text().splitlines() if line.strip() and line[0] != "#"]


def _server_files() -> list[Path]:
    return sorted(p for p in SERVERS_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def oip_tag(wheelhouse: Path = OIP_WHEELHOUSE) -> str:
    """Inputs: the base image, the wheels' names (a name pins a version and a build), the servers' code."""
    parts = [base_tag().encode(), *sorted(w.name.encode() for w in wheelhouse.glob("*.whl"))]
    for path in _server_files():
        parts.append(str(path.relative_to(REPO_ROOT)).encode())
        parts.append(path.read_bytes())
    return f"{OIP_REPOSITORY}:{_digest(parts)}"


OIP_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY wheels /wheels
# pip from its own wheel (the base has no pip), from the wheelhouse only: no network in the build
RUN python3 /wheels/{pip}/pip install --no-index --find-links /wheels --no-cache-dir --target /opt/oip \\
        {packages} && rm -rf /wheels
COPY testbed /opt/testbed/testbed
ENV PYTHONPATH=/opt/oip:/opt/testbed PATH=/opt/oip/bin:/usr/local/bin:/usr/bin:/bin PYTHONUNBUFFERED=1
WORKDIR /opt/testbed
ENTRYPOINT ["python3", "-m", "testbed.servers.host"]
"""


def ensure_oip_image(client: docker.DockerClient, wheelhouse: Path = OIP_WHEELHOUSE) -> BuiltImage:
    """The real MLServer and KServe in one image, installed offline from the host's wheelhouse
    (``scripts/install-oip-servers.sh`` downloads it), with the testbed's model and faults;
    ``docker run IMAGE mlserver|kserve ...`` starts one (:mod:`testbed.servers.host`)."""
    pips = sorted(wheelhouse.glob("pip-*.whl"))
    if not pips:
        raise ImageBuildError(f"no pip wheel in {wheelhouse}: run scripts/install-oip-servers.sh first")
    base = ensure_base_image(client)
    tag = oip_tag(wheelhouse)
    if _exists(client, tag):
        return BuiltImage(tag, built=False)
    with tempfile.TemporaryDirectory(prefix="watcher-oip-") as tmp:
        context = Path(tmp)
        shutil.copytree(wheelhouse, context / "wheels")
        for path in [REPO_ROOT / "testbed" / "__init__.py", *_server_files()]:
            dest = context / path.relative_to(REPO_ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        dockerfile = OIP_DOCKERFILE.replace("{pip}", pips[-1].name).replace("{packages}", " ".join(oip_requirements()))
        (context / "Dockerfile").write_text(dockerfile)
        try:
            client.images.build(
                path=str(context), tag=tag, buildargs={"BASE": base.tag}, network_mode="none", rm=True, forcerm=True
            )
        except docker.errors.BuildError as exc:
            log = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log)
            raise ImageBuildError(f"docker build of {tag} failed: {exc.msg}\n{log[-2000:]}") from exc
    return BuiltImage(tag, built=True)


def ensure_images(client: docker.DockerClient | None = None) -> dict[str, BuiltImage]:
    client = client or docker.from_env()
    return {"base": ensure_base_image(client), "simulator": ensure_simulator_image(client)}
