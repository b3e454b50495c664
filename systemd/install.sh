#!/bin/sh
# Install the shm-vla systemd units and example configs (`make install-systemd` runs this).
#
#   sh systemd/install.sh [--prefix P | --bin PATH] [--destdir DIR] [--no-user] [--no-reload]
#
#   --bin PATH     the shm-vla executable the units run (ExecStart=); default: --prefix's
#                  bin/shm-vla, else `command -v shm-vla`, else /usr/local/bin/shm-vla
#   --prefix P     where shm-vla is installed: a venv (/opt/shm-vla/venv) or /usr/local
#   --destdir DIR  stage everything under DIR (packaging, tests); implies --no-user and
#                  --no-reload. Same as the environment variable DESTDIR.
#   --no-user      do not create the system user shm-vla
#   --no-reload    do not run `systemctl daemon-reload`
# Environment: DESTDIR, SHM_VLA_BIN (= --bin), MPS_CONTROL (nvidia-cuda-mps-control path).
#
# Units go to /etc/systemd/system (overwritten: they are ours), example configs to
# /etc/shm-vla/<instance>.toml only where no such file exists (never overwritten).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
DESTDIR=${DESTDIR:-}
BIN=${SHM_VLA_BIN:-}
PREFIX=
MAKE_USER=1
RELOAD=1
USER_NAME=shm-vla
UNIT_DIR=/etc/systemd/system
CONF_DIR=/etc/shm-vla
STATE_DIR=/var/lib/shm-vla
DOC_DIR=/usr/local/share/doc/shm-vla
DEFAULT_BIN=/usr/local/bin/shm-vla                 # as written in the unit files
DEFAULT_MPS=/usr/bin/nvidia-cuda-mps-control       # as written in shm-vla-mps@.service

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --bin) BIN=${2:?--bin needs a path}; shift 2 ;;
        --bin=*) BIN=${1#*=}; shift ;;
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --destdir) DESTDIR=${2:?--destdir needs a directory}; shift 2 ;;
        --destdir=*) DESTDIR=${1#*=}; shift ;;
        --no-user) MAKE_USER=0; shift ;;
        --no-reload) RELOAD=0; shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

if [ -n "$DESTDIR" ]; then
    mkdir -p "$DESTDIR"
    DESTDIR=$(cd "$DESTDIR" && pwd)
    MAKE_USER=0      # a staged tree is not this machine: no user, no reload
    RELOAD=0
fi

# ---- the executable the units run
if [ -z "$BIN" ]; then
    if [ -n "$PREFIX" ]; then
        BIN=$PREFIX/bin/shm-vla
    else
        BIN=$(command -v shm-vla 2>/dev/null || echo "$DEFAULT_BIN")
    fi
fi
case "$BIN" in
    /*) ;;
    *) die "the shm-vla path must be absolute, got '$BIN'" ;;
esac
case "$BIN" in
    *[[:space:]]*|*'|'*|*'\'*|*'&'*|*'%'*) die "unsupported character in shm-vla path '$BIN'" ;;
esac
[ -x "$BIN" ] || [ -x "$DESTDIR$BIN" ] ||
    die "no executable shm-vla at $BIN (pip install the package first, or pass --prefix/--bin)"
case "$BIN" in
    /root/*|/home/*) say "warning: $BIN is under a home directory; the shm-vla user may not" \
                         "be able to read it (prefer a venv in /opt/shm-vla)" ;;
esac

MPS=${MPS_CONTROL:-$(command -v nvidia-cuda-mps-control 2>/dev/null || echo "$DEFAULT_MPS")}
case "$MPS" in
    /*) ;;
    *) die "MPS_CONTROL must be an absolute path, got '$MPS'" ;;
esac
case "$MPS" in
    *[[:space:]]*|*'|'*|*'\'*|*'&'*|*'%'*) die "unsupported character in MPS_CONTROL '$MPS'" ;;
esac

# ---- system user (before the files, so configs can be given its group)
if [ "$MAKE_USER" = 1 ] && ! getent passwd "$USER_NAME" >/dev/null; then
    NOLOGIN=$(command -v nologin 2>/dev/null || echo /bin/false)
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell "$NOLOGIN" --comment "shm-vla runtime" "$USER_NAME"
    say "created system user $USER_NAME"
fi
if [ "$MAKE_USER" = 1 ]; then
    # GPU device nodes are group video/render on some distributions.
    for g in video render; do
        if getent group "$g" >/dev/null; then usermod -a -G "$g" "$USER_NAME"; fi
    done
fi
HAVE_GROUP=0
if [ -z "$DESTDIR" ] && getent group "$USER_NAME" >/dev/null; then HAVE_GROUP=1; fi

# ---- units, with the real paths substituted
mkdir -p "$DESTDIR$UNIT_DIR"
for unit in "$HERE"/*.service; do
    name=$(basename "$unit")
    sed -e "s|$DEFAULT_BIN|$BIN|g" -e "s|$DEFAULT_MPS|$MPS|g" "$unit" > "$DESTDIR$UNIT_DIR/$name.tmp"
    chmod 0644 "$DESTDIR$UNIT_DIR/$name.tmp"
    mv -f "$DESTDIR$UNIT_DIR/$name.tmp" "$DESTDIR$UNIT_DIR/$name"
    say "installed $UNIT_DIR/$name"
done

# ---- example configs: never overwrite an operator's file
mkdir -p "$DESTDIR$CONF_DIR"
for conf in "$HERE"/*.toml; do
    name=$(basename "$conf")
    target=$DESTDIR$CONF_DIR/$name
    if [ -e "$target" ]; then
        say "kept existing $CONF_DIR/$name (example left in $conf)"
        continue
    fi
    cp "$conf" "$target"
    chmod 0640 "$target"      # readable by root and the shm-vla group only
    if [ "$HAVE_GROUP" = 1 ]; then chgrp "$USER_NAME" "$target"; fi
    say "installed $CONF_DIR/$name"
done

# ---- state directory (systemd's StateDirectory= also creates it at start) and the docs
mkdir -p "$DESTDIR$STATE_DIR/checkpoints" "$DESTDIR$STATE_DIR/sessions"
if [ "$HAVE_GROUP" = 1 ]; then
    chown "$USER_NAME:$USER_NAME" "$DESTDIR$STATE_DIR" "$DESTDIR$STATE_DIR/checkpoints" "$DESTDIR$STATE_DIR/sessions"
fi
chmod 0750 "$DESTDIR$STATE_DIR"
if [ -f "$HERE/../docs/DEPLOYMENT.md" ]; then
    mkdir -p "$DESTDIR$DOC_DIR"
    cp "$HERE/../docs/DEPLOYMENT.md" "$DESTDIR$DOC_DIR/DEPLOYMENT.md"
fi

# ---- tell a running systemd
if [ "$RELOAD" = 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    say "systemctl daemon-reload done"
elif [ "$RELOAD" = 1 ]; then
    say "systemd is not running here: no daemon-reload"
fi

say "units run $BIN"
say "next: put the checkpoint in $STATE_DIR/checkpoints, edit $CONF_DIR/flow.toml, then"
say "      systemctl enable --now shm-vla@flow && journalctl -f -u 'shm-vla*@flow.service'"
