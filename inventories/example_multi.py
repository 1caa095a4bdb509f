"""Production-like example spread over five hosts (docker layout): database + Redis, two app
hosts (nginx balances across them; releases switch them one at a time), web (nginx),
monitoring. Stack-wide settings are shared; each host adds its roles and address.

    rsdeploy check -i inventories/example_multi.py --secrets inventories/secrets.example.yml
"""

stack = {
    "layout": "docker",
    "version": "v1.0.0",
    "domain": "scheduler.example.org",
    "tls": {"mode": "certbot", "email": "ops@example.org"},
    "app": {"delivery": "bundle", "bundle_dir": "bundles"},
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

residency_multi = (
    [
        ("db1.example.org", {"roles": ["db", "redis"], "address": "10.0.0.21"}),
        ("app1.example.org", {"roles": ["app"], "address": "10.0.0.22"}),
        ("app2.example.org", {"roles": ["app"], "address": "10.0.0.25"}),
        ("web1.example.org", {"roles": ["web"], "address": "10.0.0.23"}),
        ("mon1.example.org", {"roles": ["monitoring"], "address": "10.0.0.24"}),
    ],
    stack,
)
