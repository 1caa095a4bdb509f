"""rs-status, rs-backup (+ timer) and logrotate: checked by bash -n, shellcheck, logrotate -d
and systemd-analyze, then run against stub `docker`/`curl` commands to prove their verdicts."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from rsdeploy.roles import backup, status, tls
from rsdeploy import status as rs_status
from rsdeploy.render import write_tree
from rsdeploy.stack import load_inventory
from tests.conftest import EXAMPLE_SECRETS, EXAMPLES, INVENTORIES, load_example, unreachable

STUB_DOCKER = r"""#!/bin/bash
# Stands in for the docker CLI: `compose ... ps` prints $STUB_PS; `exec` runs the probe/dump.
args=" $* "
if [[ $args == *" ps "* ]]; then printf '%b' "$STUB_PS"; exit 0; fi
if [[ $args == *" stats "* ]]; then printf '%b' "${STUB_STATS:-}"; exit 0; fi
if [[ $args == *" pg_dump "* ]]; then  # --verbose: its chatter and each table on stderr
    printf 'pg_dump: reading extensions\npg_dump: dumping contents of table "public.notes"\n' >&2
    printf 'pg_dump: dumping contents of table "public.alembic_version"\n' >&2
    printf 'PGDMP-stub-dump'; exit 0
fi
if [[ $args == *" psql "*"pg_tables"* ]]; then echo 2; exit 0; fi
if [[ $args == *" pg_restore "* ]]; then cat >/dev/null; exit "${STUB_RESTORE_RC:-0}"; fi
if [[ $args == *" /health/resilience "* ]]; then echo '{"status": "operational"}'; exit 0; fi
if [[ $args == *" exec "* ]]; then exit 0; fi
exit 1
"""
STUB_CURL = "#!/bin/bash\nprintf 200\n"


def host_files(name: str, role, host: str = "rs1.example.org", **override):
    hs = load_inventory(str(INVENTORIES / f"{name}.py"), EXAMPLE_SECRETS, env={},
                        override_data=override)[host]
    return hs, role.render(hs)


@pytest.fixture
def stub_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", STUB_DOCKER), ("curl", STUB_CURL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


@pytest.mark.parametrize("name", EXAMPLES)
def test_scripts_pass_bash_n_and_shellcheck_on_every_host(name, tmp_path):
    for host, hs in load_example(name).items():
        files = status.render(hs) + (backup.render(hs) if backup.applies(hs) else [])
        write_tree(files, tmp_path / host)
        verdicts = status.validate(tmp_path / host, hs)
        if backup.applies(hs):
            verdicts += backup.validate(tmp_path / host, hs)
        tools = {v.tool for v in verdicts}
        assert {"bash -n", "shellcheck"} <= tools, "shellcheck: apt-get install shellcheck"
        assert all(v.ok for v in verdicts), [v for v in verdicts if not v.ok]
        assert next(f for f in files if f.path == status.STATUS_PATH).mode == "755"


def test_shellcheck_catches_an_unquoted_expansion(tmp_path):
    hs, files = host_files("example_docker", status)
    write_tree(files, tmp_path)
    script = tmp_path / "usr/local/bin/rs-status"
    text = script.read_text()
    assert 'for dir in "${DISK_DIRS[@]}"' in text
    script.write_text(text.replace('for dir in "${DISK_DIRS[@]}"', "for dir in ${DISK_DIRS[@]}"))
    assert not all(v.ok for v in status.validate(tmp_path, hs))


def test_rs_status_lists_what_each_host_runs():
    multi = load_example("example_multi")
    db1, app1, web1 = (multi[f"{name}1.example.org"] for name in ("db", "app", "web"))
    assert db1.layout.services(db1)[:2] == ["db", "redis"]
    assert "migrate" not in app1.layout.services(app1)
    assert "certbot" not in web1.layout.services(web1)
    hs = load_example("example_systemd")["rs1.example.org"]
    units = status.systemd_units(hs)
    for unit in ("postgresql.service", "redis-server.service", "nginx.service",
                 "pm2-residency.service", "rs-backup.timer"):
        assert unit in units
    # the app's units run per release slot: rs-status shows the slots that run
    assert not [unit for unit in units if unit.startswith("residency-") and "@" in unit]
    assert "residency-flower.service" in units  # one instance, not per slot (flower.enabled)
    script = status.status_script(hs).content
    for slot, port in (("blue", 8000), ("green", 8010)):
        assert f"residency-backend@{slot}.service" in script
        assert f"http://127.0.0.1:{port}/health" in script


def run_status(tmp_path, stub_path, ps: str, *args: str, certificate_days: int = 90
               ) -> subprocess.CompletedProcess:
    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "version").write_text("v1.0.0\n")
    hs, files = host_files("example_docker", status,
                           paths={"base_dir": str(base), "data_dir": str(data)})
    write_tree(files, tmp_path / "tree")
    certificate = Path(tls.host_certificate_paths(hs)[0])
    certificate.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(certificate) + ".key",
                    "-out", str(certificate), "-days", str(certificate_days), "-subj", "/CN=x"],
                   check=True, capture_output=True)
    stats = "".join(f"rs-{s}-1|1.5%|{s}MiB / 1GiB\\n" for s in hs.layout.services(hs))
    env = {**os.environ, "PATH": stub_path, "STUB_PS": ps, "STUB_STATS": stats}
    return subprocess.run(["bash", str(tmp_path / "tree/usr/local/bin/rs-status"), *args],
                          env=env, capture_output=True, text=True, timeout=60)


def healthy_table(hs_services: list[str]) -> str:
    return "".join(f"{s}|rs-{s}-1|running|healthy|5 minutes ago\\n" for s in hs_services)


def test_rs_status_docker_exits_0_when_everything_is_up(tmp_path, stub_path):
    hs = load_example("example_docker")["rs1.example.org"]
    services = hs.layout.services(hs)
    proc = run_status(tmp_path, stub_path, healthy_table(services))
    assert proc.returncode == 0, proc.stdout
    # "  <name, 28 wide> <verdict> <detail>"
    checks = {line[2:30].strip(): line[31:] for line in proc.stdout.splitlines()
              if line.startswith("  ")}
    assert checks["deployed"] == "ok   v1.0.0"
    assert checks["backend"] == \
        "ok   running, healthy  [cpu 1.5%, memory backendMiB, since 5 minutes ago]"
    assert re.search(r"certificate +ok +(89|90) days left", proc.stdout), proc.stdout
    assert "backend /health/resilience" in proc.stdout and "DOWN" not in proc.stdout


def test_rs_status_docker_exits_1_naming_what_is_down(tmp_path, stub_path):
    hs = load_example("example_docker")["rs1.example.org"]
    services = hs.layout.services(hs)
    table = healthy_table([s for s in services if s not in ("celery-worker", "redis")])
    table += "celery-worker|rs-celery-worker-1|running|unhealthy|1 minute ago\\n"
    proc = run_status(tmp_path, stub_path, table)
    assert proc.returncode == 1
    down = [line.split()[0] for line in proc.stdout.splitlines() if " DOWN " in line]
    assert sorted(down) == ["celery-worker", "redis"]
    assert "2 check(s) DOWN" in proc.stdout


def test_logrotate_config_passes_logrotate_debug(tmp_path):
    hs, files = host_files("example_systemd", status, status={"log_rotate_days": 9})
    write_tree(files, tmp_path)
    (verdict,) = [v for v in status.validate(tmp_path, hs) if v.tool == "logrotate -d"]
    assert verdict.ok, verdict.detail
    text = (tmp_path / "etc/logrotate.d/residency-scheduler").read_text()
    assert "/var/log/residency-scheduler/*.log {" in text and "    rotate 9\n" in text
    assert "copytruncate" in text
    assert not any(f.path == status.LOGROTATE_PATH for f in status.render(
        load_example("example_docker")["rs1.example.org"]))


def run_backup(tmp_path, stub_path, restore_rc: int = 0):
    dumps, data, base = tmp_path / "dumps", tmp_path / "data", tmp_path / "base"
    for d in (dumps, data, base, data / "metrics"):
        d.mkdir(exist_ok=True)
    (data / "version").write_text("v1.0.0\n")
    old = dumps / "residency_scheduler-20200101T000000Z-v0.9.0.dump"
    old.write_text("old")
    os.utime(old, (time.time() - 30 * 86400,) * 2)
    recent = dumps / "residency_scheduler-20990101T000000Z-v0.9.9.dump"
    recent.write_text("recent")
    hs, files = host_files("example_docker", backup, backup={"directory": str(dumps)},
                           paths={"base_dir": str(base), "data_dir": str(data)})
    write_tree(files, tmp_path / "tree")
    env = {**os.environ, "PATH": stub_path, "STUB_RESTORE_RC": str(restore_rc)}
    proc = subprocess.run(["bash", str(tmp_path / "tree/usr/local/sbin/rs-backup")], env=env,
                          capture_output=True, text=True, timeout=60)
    return proc, dumps


def test_rs_backup_writes_a_checked_private_dump_and_prunes_old_ones(tmp_path, stub_path):
    proc, dumps = run_backup(tmp_path, stub_path)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in dumps.iterdir())
    assert "residency_scheduler-20200101T000000Z-v0.9.0.dump" not in names  # past retention
    assert "residency_scheduler-20990101T000000Z-v0.9.9.dump" in names
    (new,) = [dumps / n for n in names if n.endswith("-v1.0.0.dump")]
    assert new.read_text() == "PGDMP-stub-dump"
    assert new.stat().st_mode & 0o777 == 0o600
    assert proc.stdout.splitlines()[:2] == [  # how far along, table by table
        'rs-backup: table 1 of 2: "public.notes"', 'rs-backup: table 2 of 2: "public.alembic_version"']
    assert "reading extensions" not in proc.stdout + proc.stderr


def test_rs_backup_keeps_no_dump_that_fails_its_check(tmp_path, stub_path):
    proc, dumps = run_backup(tmp_path, stub_path, restore_rc=1)
    assert proc.returncode != 0
    assert not [p for p in dumps.iterdir() if "v1.0.0" in p.name]


def published(tmp_path) -> dict[str, float]:
    """What rs-backup published for node-exporter, checked by ``promtool check metrics``:
    {metric name: value}, each sample with the host's stack and kind labels."""
    path = tmp_path / "data" / "metrics" / backup.METRICS_FILE
    assert path.stat().st_mode & 0o777 == 0o644  # node-exporter runs as another user
    text = path.read_text()
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    samples = re.findall(r'^(\w+)\{stack="scheduler\.example\.org",kind="dump"\} (\S+)$', text,
                         re.MULTILINE)
    assert len(samples) == len([line for line in text.splitlines() if not line.startswith("#")])
    return {name: float(value) for name, value in samples}


def test_rs_backup_publishes_each_run_and_keeps_the_last_good_one_through_a_failure(
        tmp_path, stub_path):
    before = time.time()
    proc, dumps = run_backup(tmp_path, stub_path)
    assert proc.returncode == 0, proc.stderr
    good = published(tmp_path)
    (new,) = [p for p in dumps.iterdir() if p.name.endswith("-v1.0.0.dump")]
    assert good["rsdeploy_backup_last_attempt_success"] == 1
    assert before - 1 <= good["rsdeploy_backup_last_success_timestamp_seconds"] <= time.time()
    assert good["rsdeploy_backup_last_success_size_bytes"] == new.stat().st_size
    assert good["rsdeploy_backup_max_age_seconds"] == 36 * 3600  # status.backup_max_age_hours
    time.sleep(1.1)  # the failed attempt's own time is later
    proc, _ = run_backup(tmp_path, stub_path, restore_rc=1)
    assert proc.returncode != 0
    failed = published(tmp_path)
    assert failed["rsdeploy_backup_last_attempt_success"] == 0
    assert failed["rsdeploy_backup_last_attempt_timestamp_seconds"] > \
        good["rsdeploy_backup_last_success_timestamp_seconds"]
    for kept in ("last_success_timestamp_seconds", "last_success_size_bytes",
                 "last_success_duration_seconds"):
        assert failed[f"rsdeploy_backup_{kept}"] == good[f"rsdeploy_backup_{kept}"], kept


def test_rs_backup_that_never_succeeded_publishes_no_good_backup(tmp_path, stub_path):
    proc, _ = run_backup(tmp_path, stub_path, restore_rc=1)
    assert proc.returncode != 0
    assert set(published(tmp_path)) == {"rsdeploy_backup_last_attempt_success",
                                        "rsdeploy_backup_last_attempt_timestamp_seconds",
                                        "rsdeploy_backup_max_age_seconds"}


def test_backup_timer_follows_settings(tmp_path):
    hs, files = host_files("example_systemd", backup,
                           backup={"on_calendar": "Mon *-*-* 04:00:00 UTC"})
    write_tree(files, tmp_path)
    timer = (tmp_path / "etc/systemd/system/rs-backup.timer").read_text()
    assert "OnCalendar=Mon *-*-* 04:00:00 UTC\n" in timer and "Persistent=true\n" in timer
    service = (tmp_path / "etc/systemd/system/rs-backup.service").read_text()
    assert 'ExecStart="/usr/local/sbin/rs-backup"' in service
    assert "runuser -u postgres -- pg_dump" in files[0].content  # peer auth, no password
    assert all(v.ok for v in backup.validate(tmp_path, hs))


def test_bad_calendar_is_refused_at_validation():
    from rsdeploy.errors import SettingsError

    with pytest.raises(SettingsError, match="backup.on_calendar"):
        host_files("example_systemd", backup, backup={"on_calendar": "daily\nExecStart=/bin/sh"})


def test_rsdeploy_status_reads_the_porcelain_records_and_fails_on_a_down_service(
        tmp_path, stub_path):
    hs = load_example("example_docker")["rs1.example.org"]
    services = hs.layout.services(hs)
    table = healthy_table([s for s in services if s != "redis"])
    table += "redis|rs-redis-1|exited|||\\n"
    proc = run_status(tmp_path, stub_path, table, "--porcelain")
    assert proc.returncode == 1
    checks = rs_status.parse(hs.name, proc.stdout)
    by_name = {c.name: c for c in checks}
    assert set(services) <= set(by_name)
    assert (by_name["backend"].verdict, by_name["backend"].cpu, by_name["backend"].since) == \
        ("ok", "1.5%", "5 minutes ago")
    assert (by_name["redis"].verdict, by_name["redis"].detail) == ("down", "exited")
    assert by_name["deployed"].detail == "v1.0.0" and by_name["deploy lock"].detail == "free"
    assert not rs_status.healthy(checks)
    summary = rs_status.table(checks).splitlines()[-1]
    assert summary.startswith(f"1 host(s), {len(checks)} checks, 1 down: rs1.example.org redis")
    assert rs_status.as_json(checks)[hs.name]["healthy"] is False


def test_rsdeploy_status_shows_a_held_lock_in_words_without_its_token():
    record = ("check\tRelease\tdeploy lock\twarn\theld: {\"who\": \"ana@laptop\", \"version\": "
              "\"v1.1.0\", \"since\": \"2026-12-01T01:00:00Z\", \"pid\": 42}\t\t\t\n")
    (check,) = rs_status.parse("rs1", record)
    assert check.detail == "held by ana@laptop since 2026-12-01T01:00:00Z, deploying v1.1.0"


def test_rsdeploy_status_names_a_host_that_does_not_answer():
    hs = load_example("example_docker")["rs1.example.org"]
    gone = unreachable(hs)
    (check,) = rs_status.collect({hs.name: gone}, status.STATUS_PATH)
    assert (check.host, check.name, check.verdict) == (hs.name, "ssh", "down")
    assert "refused" in check.detail, check.detail
