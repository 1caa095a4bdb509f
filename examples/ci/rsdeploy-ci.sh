#!/usr/bin/env bash
# rsdeploy from CI: the steps both example pipelines run (GitHub Actions: github-deploy.yml,
# GitLab CI: gitlab-ci.yml). Copy it to ci/rsdeploy-ci.sh in the repository that holds your
# inventories.
#
#   ci/rsdeploy-ci.sh check                 settings and every rendered file, no host contacted
#   ci/rsdeploy-ci.sh deploy TAG            deploy TAG to $RS_ENVIRONMENT (waits for its lock)
#   ci/rsdeploy-ci.sh verify [TAG]          the verify suite on every host of $RS_ENVIRONMENT
#   ci/rsdeploy-ci.sh rollback TAG          switch $RS_ENVIRONMENT back to TAG
#
# What the CI's secret store provides (masked variables; never on a command line, never echoed):
#   RS_SSH_PRIVATE_KEY   the deploy user's private SSH key
#   RS_SSH_KNOWN_HOSTS   the hosts' pinned public keys (known_hosts lines): no host is trusted
#                        on first use
#   RS_SECRETS_YAML      the environment's secrets file (see inventories/secrets.example.yml)
# and its plain variables:
#   RS_ENVIRONMENT       staging | production (the inventory is inventories/$RS_ENVIRONMENT.py
#                        unless RS_INVENTORY names another)
#   RS_LOCK_WAIT         seconds to wait for another run's deploy lock (default 900)
#   RSDEPLOY_PACKAGE     what pip installs when no rsdeploy is on PATH (a pinned git URL)
#
# Each run leaves rsdeploy-summary.json (the command's summary) for the job's artifacts, and its
# summary line at the end of the job log.
set -euo pipefail

command=${1:?usage: rsdeploy-ci.sh check|deploy TAG|verify [TAG]|rollback TAG}
tag=${2:-}
inventory=${RS_INVENTORY:-inventories/${RS_ENVIRONMENT:-staging}.py}
summary=${RS_SUMMARY_FILE:-rsdeploy-summary.json}

# A private directory for the key, the host keys and the secrets file, gone when the job ends.
work=$(mktemp -d)
chmod 700 "$work"
trap 'rm -rf "$work"' EXIT

install_rsdeploy() {
  command -v rsdeploy >/dev/null && return
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet "${RSDEPLOY_PACKAGE:?no rsdeploy on PATH: set RSDEPLOY_PACKAGE}"
  PATH="$work/venv/bin:$PATH"
}

# SSH reads the key and the pinned host keys from $HOME/.ssh: a home of the job's own.
ssh_identity() {
  export HOME="$work/home"
  mkdir -m 700 "$HOME" "$HOME/.ssh"
  (umask 077
   printf '%s\n' "${RS_SSH_PRIVATE_KEY:?RS_SSH_PRIVATE_KEY is not set (the CI secret store)}" \
     > "$HOME/.ssh/id_ed25519"
   printf '%s\n' "${RS_SSH_KNOWN_HOSTS:?RS_SSH_KNOWN_HOSTS is not set (pinned host keys)}" \
     > "$HOME/.ssh/known_hosts")
}

secrets_file() {
  (umask 077; printf '%s\n' "${RS_SECRETS_YAML:?RS_SECRETS_YAML is not set (the CI secret store)}" \
     > "$work/secrets.yml")
  # rsdeploy reads it from the environment, never from its command line.
  export RS_SECRETS_FILE="$work/secrets.yml"
}

install_rsdeploy
# No exec below: the EXIT trap must remove the key and the secrets after rsdeploy returns.
case "$command" in
  check)
    secrets_file
    rsdeploy check -i "$inventory"
    ;;
  deploy|rollback)
    : "${tag:?$command needs a release tag}"
    secrets_file
    ssh_identity
    if [ "$command" = deploy ]; then
      set -- deploy --version "$tag"
    else
      set -- rollback --to "$tag"
    fi
    rsdeploy "$@" -i "$inventory" --lock-wait "${RS_LOCK_WAIT:-900}" --summary-json "$summary"
    ;;
  verify)
    secrets_file
    ssh_identity
    rsdeploy verify -i "$inventory" ${tag:+--version "$tag"} --summary-json "$summary"
    ;;
  *)
    echo "rsdeploy-ci.sh: unknown command $command" >&2
    exit 2
    ;;
esac
