"""Production-like example: the whole stack on one host, systemd layout, every component on.

    rsdeploy check -i inventories/example_systemd.py --secrets inventories/secrets.example.yml
"""

stack = {
    "layout": "systemd",
    "version": "v1.0.0",
    "domain": "scheduler.example.org",
    "extra_domains": ["www.scheduler.example.org"],
    "tls": {"mode": "certbot", "email": "ops@example.org"},
    "app": {
        "source_repo": "https://git.example.org/residency/scheduler.git",
    },
    "backend": {"log_level": "INFO", "celery_log_level": "INFO", "workers": 4},
    "flower": {"enabled": True},  # Celery's monitor at https://<domain>/flower/ (basic auth)
    "alertmanager": {
        "email": {
            "to": ["oncall@example.org"],
            "sender": "alerts@example.org",
            "smtp_host": "smtp.example.org",
            "smtp_username": "alerts@example.org",
        },
        "slack": {"channel": "#rs-alerts"},
        "pagerduty": {},
    },
}

residency_prod = (
    [("rs1.example.org", {"ssh_user": "deploy", "address": "10.0.0.11"})],
    stack,
)
