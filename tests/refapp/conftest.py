"""Containers for the reference app's image tests: one network, PostgreSQL 15 + pgvector, Redis.

Everything is built locally (``rsdeploy_dev.images.build`` skips up-to-date images), published only
on 127.0.0.1, labelled, and removed at the end. Without a Docker engine the tests skip.
"""

from __future__ import annotations

import uuid
from pathlib import PurePosixPath

import pytest
from refapp_support import (LABEL, PG_SUPERUSER_PASSWORD, DB_PASSWORD, REDIS_PASSWORD, Postgres,
                            Published, app_env, published_port, tar_of, wait_http)

from rsdeploy_dev import refapp


@pytest.fixture(scope="session")
def docker_client():
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        pytest.skip(f"no Docker engine answers: {error}")
    return client


@pytest.fixture(scope="session")
def built(docker_client):
    """Every backend release, the v1.0.0 frontend, PostgreSQL and Redis (built unless up to date)."""
    from rsdeploy_dev import images

    images.build(["postgres", "redis", "backend"], refapp.VERSIONS, client=docker_client)
    images.build(["frontend"], ["v1.0.0"], client=docker_client)


@pytest.fixture(scope="session")
def network(docker_client):
    net = docker_client.networks.create(f"refapp-test-{uuid.uuid4().hex[:8]}", labels=LABEL)
    yield net.name
    net.remove()


@pytest.fixture(scope="session")
def containers(docker_client, network):
    """Start containers on the test network, reachable by ``aliases``; removed at the end.

    ``files``: {path: text} put into the container before it starts.
    Example: ``containers("rsdeploy/redis:7", aliases=["redis"], command=[...])``
    """
    started = []

    def run(image: str, aliases: tuple[str, ...] | list[str] = (),
            files: dict[str, str] | None = None, **kwargs):
        endpoint = docker_client.api.create_endpoint_config(aliases=list(aliases))
        container = docker_client.containers.create(
            image, labels=LABEL, network=network, networking_config={network: endpoint}, **kwargs)
        started.append(container)
        for path, text in (files or {}).items():
            container.put_archive(str(PurePosixPath(path).parent), tar_of(PurePosixPath(path).name, text))
        container.start()
        return container

    yield run
    for container in reversed(started):
        container.remove(force=True, v=True)


@pytest.fixture(scope="session")
def postgres(built, containers) -> Postgres:
    """PostgreSQL 15 + pgvector; the init script makes the app role, not a superuser."""
    password = DB_PASSWORD.replace("'", "''")
    init = f"CREATE ROLE scheduler LOGIN NOSUPERUSER PASSWORD '{password}';\n"
    container = containers("rsdeploy/postgres:15", aliases=["db"],
                           environment={"POSTGRES_PASSWORD": PG_SUPERUSER_PASSWORD},
                           files={"/docker-entrypoint-initdb.d/10-app-role.sql": init})
    db = Postgres(container)
    db.wait_ready()
    return db


@pytest.fixture(scope="session")
def redis(built, containers):
    return containers("rsdeploy/redis:7", aliases=["redis"],
                      command=["redis-server", "--requirepass", REDIS_PASSWORD])


@pytest.fixture(scope="session")
def backend(postgres, redis, containers):
    """``backend(tag, database_url, aliases=(), **env)``: a started backend, published on 127.0.0.1."""

    def start(tag: str, database_url: str, aliases: tuple[str, ...] = (), **env: str) -> Published:
        container = containers(refapp.image_name(tag, "backend"), aliases=aliases,
                               environment=app_env(database_url, **env),
                               ports={"8000/tcp": ("127.0.0.1", None)})
        published = Published(container, published_port(container, "8000/tcp"))
        wait_http(published.url + "/", container)
        return published

    return start
