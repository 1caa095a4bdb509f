"""Stand-in for the Residency Scheduler backend, kept by rsdeploy as its reference app.

It keeps the real application's deployment contract (entrypoint, endpoints, metrics, Celery
app, settings and their production refusal rules, Alembic migrations) and nothing else.
"""
