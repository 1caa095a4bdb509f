#!/usr/bin/env bash
# rsdeploy from CI: the steps both pipelines run (.gitlab-ci.yml, .github/workflows/deploy.yml),
# from the top of this site repository.
#
#   ci/rsdeploy-ci.sh check                 settings and every rendered file, no host contacted
#   ci/rsdeploy-ci.sh deploy TAG            deploy TAG to $RS_ENVIRONMENT (waits for its lock)
#   ci/rsdeploy-ci.sh verify [TAG]          the verify suite on every host of $RS_ENVIRONMENT
#   ci/rsdeploy-ci.sh rollback TAG          switch $RS_ENVIRONMENT back to TAG
#
# What the CI's secret store provides (masked variables; never on a command line, never echoed):
#   RS_SSH_PRIVATE_KEY   the deploy user's private SSH key
#   RS_SECRETS_YAML      the environment's secrets file (secrets/<environment>.yml)
# and its plain variables:
#   RS_ENVIRONMENT       staging | production (an environment of rsdeploy.yml)
#   RSDEPLOY_VERSION     the rsdeploy this repository is pinned to: the runner image must carry
#                        exactly it (a runner without rsdeploy gets it from pip)
#   RS_LOCK_WAIT         seconds to wait for another run's deploy lock (default 900)
# The hosts' keys are pinned in known_hosts (this repository), never trusted on first use here.
#
# Each run leaves rsdeploy-summary.json (the command's summary) for the job's artifacts, and its
# summary line at the end of the job log.
set -euo pipefail

command=${1:?usage: rsdeploy-ci.sh check|deploy TAG|verify [TAG]|rollback TAG}
tag=${2:-}
environment=${RS_ENVIRONMENT:?RS_ENVIRONMENT is not set (staging or production)}
pinned=${RSDEPLOY_VERSION:?RSDEPLOY_VERSION is not set (the rsdeploy this repository is pinned to)}
summary=${RS_SUMMARY_FILE:-rsdeploy-summary.json}

# A private directory for the key and the secrets file, gone when the job ends.
work=$(mktemp -d)
chmod 700 "$work"
trap 'rm -rf "$work"' EXIT

# The pinned rsdeploy: the runner image's, or pip's when the runner has none.
ensure_rsdeploy() {
  if ! command -v rsdeploy >/dev/null; then
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install --quiet "${RSDEPLOY_PACKAGE:-rsdeploy==$pinned}"
    PATH="$work/venv/bin:$PATH"
  fi
  local found
  found=$(rsdeploy --version)
  if [ "$found" != "rsdeploy $pinned" ]; then
    echo "rsdeploy-ci.sh: this repository is pinned to rsdeploy $pinned, the runner has $found:" \
         "use the runner image of $pinned (or change RSDEPLOY_VERSION)" >&2
    exit 2
  fi
}

# SSH reads the key from $HOME/.ssh: a home of the job's own.
ssh_identity() {
  export HOME="$work/home"
  mkdir -m 700 "$HOME" "$HOME/.ssh"
  (umask 077
   printf '%s\n' "${RS_SSH_PRIVATE_KEY:?RS_SSH_PRIVATE_KEY is not set (the CI secret store)}" \
     > "$HOME/.ssh/id_ed25519")
}

secrets_file() {
  (umask 077; printf '%s\n' "${RS_SECRETS_YAML:?RS_SECRETS_YAML is not set (the CI secret store)}" \
     > "$work/secrets.yml")
  # rsdeploy reads it from the environment, never from its command line.
  export RS_SECRETS_FILE="$work/secrets.yml"
}

ensure_rsdeploy
# No exec below: the EXIT trap must remove the key and the secrets after rsdeploy returns.
case "$command" in
  check)
    secrets_file
    rsdeploy check --env "$environment"
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
    rsdeploy "$@" --env "$environment" --lock-wait "${RS_LOCK_WAIT:-900}" --summary-json "$summary"
    ;;
  verify)
    secrets_file
    ssh_identity
    rsdeploy verify --env "$environment" ${tag:+--version "$tag"} --summary-json "$summary"
    ;;
  *)
    echo "rsdeploy-ci.sh: unknown command $command" >&2
    exit 2
    ;;
esac
