#!/usr/bin/env bash
# A real, single-node ZooKeeper 3.8 for tests and CI, run from Debian's jar packages with the
# machine's Java (17). It listens on 127.0.0.1 only and keeps everything under .zk/ (git-ignored).
#
#   bash scripts/zookeeper.sh install        # download + unpack the jars into .zk/root (idempotent)
#   bash scripts/zookeeper.sh start [PORT]   # start in the background, wait for "imok",
#                                            # print EXFM_ZK_HOSTS=127.0.0.1:PORT on stdout
#   bash scripts/zookeeper.sh stop           # stop the server that `start` started
#   bash scripts/zookeeper.sh status         # print EXFM_ZK_HOSTS=... if it answers, else exit 1
#
# PORT defaults to $EXFM_ZK_PORT, else a free port chosen at start. Only the EXFM_ZK_HOSTS line
# goes to stdout (messages go to stderr), so CI can do: export "$(bash scripts/zookeeper.sh start)".
# EXFM_ZK_DIR overrides the state folder (default: <repo>/.zk).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ZK_DIR="${EXFM_ZK_DIR:-$ROOT/.zk}"
DEBS="$ZK_DIR/debs"
UNPACKED="$ZK_DIR/root"
PIDFILE="$ZK_DIR/zookeeper.pid"
PORTFILE="$ZK_DIR/zookeeper.port"
LOG="$ZK_DIR/zookeeper.log"
CFG="$ZK_DIR/zoo.cfg"
PACKAGES=(libzookeeper-java libslf4j-java libnetty-java libdropwizard-metrics-java libsnappy-java)
START_TIMEOUT="${EXFM_ZK_START_TIMEOUT:-60}"

log() { echo "zookeeper.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@";
    elif command -v sudo >/dev/null 2>&1; then sudo "$@";
    else die "need root (or sudo) for: $*"; fi
}

pick_python() {
    for p in python3 python; do
        if command -v "$p" >/dev/null 2>&1; then echo "$p"; return 0; fi
    done
    return 1
}

# The jar folder: the unpacked debs, or the system's after the apt-get install fallback.
java_dir() {
    if [ -f "$UNPACKED/usr/share/java/zookeeper.jar" ]; then echo "$UNPACKED/usr/share/java";
    elif [ -f /usr/share/java/zookeeper.jar ]; then echo /usr/share/java;
    else return 1; fi
}

# Exactly the jars the server needs (one slf4j binding, no duplicate netty-all).
classpath() {
    local dir jar cp="" missing=""
    dir="$(java_dir)" || die "ZooKeeper jars not found; run: bash scripts/zookeeper.sh install"
    for jar in zookeeper zookeeper-jute slf4j-api slf4j-simple metrics-core snappy-java \
               netty-handler netty-common netty-transport netty-buffer netty-codec netty-resolver \
               netty-transport-native-epoll netty-transport-native-unix-common; do
        if [ -f "$dir/$jar.jar" ]; then cp="${cp:+$cp:}$dir/$jar.jar"; else missing="$missing $jar"; fi
    done
    [ -z "$missing" ] || die "missing jars in $dir:$missing (run: bash scripts/zookeeper.sh install)"
    echo "$cp"
}

cmd_install() {
    command -v java >/dev/null 2>&1 || die "java not found (ZooKeeper 3.8 needs Java 11+; Debian: openjdk-17-jre-headless)"
    java -version >/dev/null 2>&1 || die "'java -version' fails"
    if [ -f "$UNPACKED/usr/share/java/zookeeper.jar" ]; then
        log "already installed in $UNPACKED"; return 0
    fi
    mkdir -p "$DEBS"
    local ok=1
    if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e '^lock$' -e '^partial$' -e '^auxfiles$')" ]; then
        log "apt package lists are empty; running apt-get update"
        as_root apt-get update >&2 || log "apt-get update failed; trying the download anyway"
    fi
    if ! (cd "$DEBS" && apt-get download "${PACKAGES[@]}" >&2); then
        log "apt-get download failed; running apt-get update and retrying"
        if as_root apt-get update >&2 && (cd "$DEBS" && apt-get download "${PACKAGES[@]}" >&2); then
            ok=1
        else
            ok=0
        fi
    fi
    if [ "$ok" = 1 ]; then
        local deb
        rm -rf "$UNPACKED.tmp"; mkdir -p "$UNPACKED.tmp"
        for deb in "$DEBS"/*.deb; do dpkg-deb -x "$deb" "$UNPACKED.tmp"; done
        rm -rf "$UNPACKED"; mv "$UNPACKED.tmp" "$UNPACKED"   # complete or absent, never half
        log "installed ZooKeeper jars into $UNPACKED"
    else
        log "apt-get download failed again; falling back to: apt-get install -y zookeeper"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y zookeeper >&2 \
            || die "could not install ZooKeeper (apt-get download and apt-get install both failed)"
    fi
    classpath >/dev/null
}

# ruok -> imok over TCP, with python (nc is often absent).
ruok() {
    local port="$1" py
    py="$(pick_python)" || { exec 3<>"/dev/tcp/127.0.0.1/$port" && echo ruok >&3 && \
                             [ "$(head -c 4 <&3)" = imok ]; return; }
    "$py" - "$port" <<'EOF' 2>/dev/null
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
        s.sendall(b"ruok")
        sys.exit(0 if s.recv(16) == b"imok" else 1)
except OSError:
    sys.exit(1)
EOF
}

running_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid; pid="$(cat "$PIDFILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

free_port() {
    "$(pick_python)" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd_start() {
    local port="${1:-${EXFM_ZK_PORT:-}}" pid
    if pid="$(running_pid)"; then
        local old; old="$(cat "$PORTFILE")"
        if [ -n "$port" ] && [ "$port" != "$old" ]; then
            die "already running (pid $pid) on port $old; stop it first to use port $port"
        fi
        ruok "$old" || die "pid $pid is running but 127.0.0.1:$old does not answer ruok (see $LOG)"
        log "already running (pid $pid)"
        echo "EXFM_ZK_HOSTS=127.0.0.1:$old"; return 0
    fi
    local cp; cp="$(classpath)"
    [ -n "$port" ] || port="$(free_port)"
    if ruok "$port"; then die "port $port already answers ruok: another ZooKeeper, not started by this script"; fi
    mkdir -p "$ZK_DIR/data"
    cat > "$CFG" <<EOF
tickTime=2000
dataDir=$ZK_DIR/data
clientPort=$port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr
maxClientCnxns=0
EOF
    # setsid: the server gets its own process group, so it outlives this shell and `stop` can end it.
    local detach=(); command -v setsid >/dev/null 2>&1 && detach=(setsid)
    "${detach[@]}" java -Xmx256m -Dzookeeper.log.dir="$ZK_DIR" -cp "$cp" \
        org.apache.zookeeper.server.ZooKeeperServerMain "$CFG" >"$LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" > "$PIDFILE"; echo "$port" > "$PORTFILE"
    local waited=0
    until ruok "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"; tail -n 30 "$LOG" >&2 || true
            die "ZooKeeper exited during start (log: $LOG)"
        fi
        if [ "$waited" -ge $((START_TIMEOUT * 5)) ]; then
            kill "$pid" 2>/dev/null || true; rm -f "$PIDFILE"; tail -n 30 "$LOG" >&2 || true
            die "ZooKeeper did not answer ruok on 127.0.0.1:$port within ${START_TIMEOUT}s (log: $LOG)"
        fi
        sleep 0.2; waited=$((waited + 1))
    done
    log "started pid $pid on 127.0.0.1:$port (log: $LOG)"
    echo "EXFM_ZK_HOSTS=127.0.0.1:$port"
}

cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then log "not running"; rm -f "$PIDFILE"; return 0; fi
    kill "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "pid $pid ignored SIGTERM; sending SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
    rm -f "$PIDFILE"
    log "stopped pid $pid"
}

cmd_status() {
    local pid
    pid="$(running_pid)" || { log "not running"; return 1; }
    local port; port="$(cat "$PORTFILE")"
    ruok "$port" || { log "pid $pid does not answer ruok on $port"; return 1; }
    echo "EXFM_ZK_HOSTS=127.0.0.1:$port"
}

case "${1:-}" in
    install) cmd_install ;;
    start) shift; cmd_start "${1:-}" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 install | start [PORT] | stop | status" >&2; exit 2 ;;
esac
