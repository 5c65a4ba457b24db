"""Will `docker compose up` recreate the agent? The gate's comparison (invariant 7), against
what docker-compose 1.29 and Compose v2 really do.

A service that uses most of what a node's agent definition can say (entrypoint and command,
environment from the file, the shell and an env_file, labels, every kind of volume, tmpfs,
user, working directory, stop signal) is brought up by each implementation; the comparison
must find the container it created the same as the files (so a re-run `up -d` stays "already
running"), and must find each single change that makes compose recreate it (so an upgrade waits
for the gate). Each verdict is checked against what compose then does: the container kept, or
replaced. The pure parts (image references, where the gate reads a project file) are tested on
their own.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dockerutil
import pytest
from conftest import clean_env
from test_compose import implementations, require_compose

from supervisor.containers.recreate import (
    CannotTell,
    Project,
    Verdict,
    normal_ref,
    verdict,
)

SERVICE = """\
services:
  agent:
    image: {image}
    container_name: {name}
    entrypoint: cilium-agent --config-dir=/tmp/cilium/config-map
    command: ["--extra", "two words"]
    network_mode: none
    restart: "no"
    environment:
      - A=1
      - FROM_SHELL
      - B=${{B_VALUE:-b}}
    env_file: agent.env
    labels:
      io.example.role: agent
    volumes:
      - ./config-map:/tmp/cilium/config-map:ro
      - ${{STATE_DIR:-./state}}:/var/state
      - named:/data
      - /anon
      - type: bind
        source: ./long
        target: /long
        read_only: true
    tmpfs:
      - /run/scratch
    user: "0"
    working_dir: /tmp
    stop_signal: SIGINT
volumes:
  named: {{}}
"""


def test_image_references_are_compared_as_one_spelling() -> None:
    """Docker Hub's implicit registry, library/ and :latest are the same image reference."""
    assert normal_ref("busybox") == normal_ref("docker.io/library/busybox:latest")
    assert normal_ref("quay.io/cilium/cilium:v1.16.5") == "quay.io/cilium/cilium:v1.16.5"
    assert normal_ref("registry:5000/a/b") == "registry:5000/a/b:latest"
    assert normal_ref("a@sha256:00") == "a@sha256:00"
    assert normal_ref("quay.io/cilium/cilium:v1") != normal_ref("quay.io/cilium/cilium:v2")


def test_the_gate_reads_project_files_where_the_project_is_mounted(tmp_path: Path) -> None:
    """A host path in the project directory is read under the mount, one outside it at its own
    path; relative paths are the project directory's; COMPOSE_FILE (the environment, else the
    project's .env) beats the files compose recorded on the container."""
    mount = tmp_path / "mount"
    mount.mkdir()
    where = Project(mount, Path("/srv/node"))
    assert where.read(Path("/srv/node/a/b.yml")) == mount / "a" / "b.yml"
    assert where.read(Path("b.yml")) == mount / "b.yml"
    assert where.read(Path("/etc/other.yml")) == Path("/etc/other.yml")
    for name in ("docker-compose.yml", "extra.yml", "env.yml"):
        (mount / name).write_text("services: {}\n")
    labels = {"com.docker.compose.project.config_files": "/srv/node/docker-compose.yml,extra.yml"}
    assert where.files(labels, {}) == [mount / "docker-compose.yml", mount / "extra.yml"]
    assert where.files(labels, {"COMPOSE_FILE": "env.yml:extra.yml"}) == [
        mount / "env.yml",
        mount / "extra.yml",
    ]
    (mount / ".env").write_text("COMPOSE_FILE=env.yml\n")
    assert where.files(labels, {}) == [mount / "env.yml"]
    with pytest.raises(CannotTell, match="not readable in the gate service"):
        where.files({}, {"COMPOSE_FILE": "/etc/elsewhere.yml"})


def test_a_container_compose_did_not_make_cannot_be_told(tmp_path: Path) -> None:
    """No compose labels (a `docker run` container): the gate cannot tell, and says why."""
    found = verdict({"Config": {"Labels": {}}}, lambda _ref: None, mount=tmp_path, environ={})
    assert found.replacing is None
    assert "not created by compose" in found.why[0]


# --- against the real compose implementations ----------------------------------------------------


class Node:
    """A compose project of one service in a directory of the test's own."""

    def __init__(self, cmd: list[str], client: Any, root: Path, image: str) -> None:
        self.cmd = cmd
        self.client = client
        self.root = root
        self.name = dockerutil.unique("recreate")
        self.image = image
        self.env = clean_env(FROM_SHELL="from the shell")
        #: The volumes Docker made for the containers (removed at the end: a recreated
        #: container's anonymous volume outlives `down -v`).
        self.volumes: set[str] = set()
        for d in ("config-map", "config-map-2", "state", "long"):
            (root / d).mkdir(parents=True)
        (root / "agent.env").write_text("FROM_FILE=1\n")
        self.write()

    @property
    def file(self) -> Path:
        return self.root / "docker-compose.yml"

    def write(self, **changes: str) -> None:
        text = SERVICE.format(image=self.image, name=self.name)
        for old, new in changes.items():
            assert old in text, old
            text = text.replace(old, new)
        self.file.write_text(text)

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.cmd, "-p", self.name, "-f", str(self.file), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.root,
            timeout=120,
            check=False,
        )

    def up(self) -> str:
        """`up -d`; the container's id."""
        r = self.compose("up", "-d")
        assert r.returncode == 0, r.stdout + r.stderr
        c = self.client.containers.get(self.name)
        assert c.attrs["State"]["Running"], c.attrs["State"]
        self.volumes |= {m["Name"] for m in c.attrs["Mounts"] if m.get("Type") == "volume"}
        return str(c.id)

    def verdict(self) -> Verdict:
        """The gate's verdict on the running container, reading the files in place."""
        import docker.errors

        attrs = self.client.containers.get(self.name).attrs

        def image_of(ref: str) -> dict[str, Any] | None:
            try:
                return dict(self.client.images.get(ref).attrs)
            except docker.errors.ImageNotFound:
                return None

        return verdict(attrs, image_of, mount=self.root, environ=self.env)


@pytest.fixture(params=implementations())
def node(request: pytest.FixtureRequest, docker_client: Any, tmp_path: Path) -> Iterator[Node]:
    """A one-service project of each compose implementation, taken down afterwards."""
    cmd: list[str] = request.param
    require_compose(cmd)
    n = Node(cmd, docker_client, tmp_path / "node", dockerutil.standin_image(docker_client))
    try:
        yield n
    finally:
        import docker.errors

        n.compose("down", "-t", "1", "-v")
        dockerutil.remove_project(docker_client, n.name)
        for volume in n.volumes:
            with contextlib.suppress(docker.errors.APIError):
                docker_client.volumes.get(volume).remove()


@pytest.fixture
def other_tag(docker_client: Any) -> Iterator[str]:
    """The stand-in image under a second tag, removed afterwards."""
    import docker.errors

    image = docker_client.images.get(dockerutil.standin_image(docker_client))
    repo, tag = f"{dockerutil.PREFIX}-standin", dockerutil.unique("tag").rsplit("-", 1)[-1]
    image.tag(repo, tag)
    try:
        yield f"{repo}:{tag}"
    finally:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(f"{repo}:{tag}")


Change = Callable[["Node", str], str]


def _edit(**changes: str) -> Change:
    def change(n: Node, _tag: str) -> str:
        n.write(**changes)
        return next(iter(changes.values()))

    return change


def _image(n: Node, tag: str) -> str:
    n.image = tag
    n.write()
    return "image"


def _shell(n: Node, _tag: str) -> str:
    n.env["B_VALUE"] = "from the shell now"
    n.write()
    return "environment"


def _env_file(n: Node, _tag: str) -> str:
    (n.root / "agent.env").write_text("FROM_FILE=2\n")
    return "environment"


#: Each change, and the word the gate's difference names.
CHANGES: list[tuple[str, Change, str]] = [
    ("image tag", _image, "image"),
    ("environment", _edit(**{"- A=1": "- A=2"}), "environment"),
    ("variable from the shell", _shell, "environment"),
    ("env_file", _env_file, "environment"),
    ("command", _edit(**{'"two words"': '"three words"'}), "command"),
    ("bind source", _edit(**{"./config-map:": "./config-map-2:"}), "volumes"),
    ("label", _edit(**{"role: agent": "role: agent-2"}), "labels"),
    ("stop signal", _edit(**{"stop_signal: SIGINT": "stop_signal: SIGTERM"}), "stop_signal"),
]


@pytest.mark.docker
@pytest.mark.slow
def test_the_gate_sees_what_compose_recreates_and_only_that(node: Node, other_tag: str) -> None:
    """The container compose created matches the files (a re-run keeps it); each change that
    compose recreates the container for is seen as one, naming what changed; and the container
    compose then creates matches the files again."""
    first = node.up()
    assert node.verdict() == Verdict(False), node.verdict()
    assert node.up() == first  # compose agrees: nothing to recreate
    current = first
    for what, change, word in CHANGES:
        change(node, other_tag)
        found = node.verdict()
        assert found.replacing is True, (what, found)
        assert any(d.startswith(word) for d in found.why), (what, found.why)
        replaced = node.up()
        assert replaced != current, f"{what}: compose kept the container the gate said it replaces"
        current = replaced
        assert node.verdict() == Verdict(False), (what, node.verdict())
