#!/usr/bin/env bash
# Installs what ctrpull's tests and quickstart need on a Debian bookworm machine:
# containerd 1.6 (Debian's), runc, the reference registry, busybox-static, protoc,
# and containerd 1.7 from Debian trixie unpacked into a private prefix.
#
# Idempotent and quiet: it only talks when it installs something, and prints the
# versions it found at the end.
#
# Environment:
#   CTRPULL_CONTAINERD17_PREFIX  where containerd 1.7 is unpacked
#                                (default /opt/ctrpull/containerd-1.7)
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

PREFIX17="${CTRPULL_CONTAINERD17_PREFIX:-/opt/ctrpull/containerd-1.7}"
PACKAGES=(containerd runc docker-registry busybox-static protobuf-compiler ca-certificates iproute2)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log() { printf 'deps: %s\n' "$*" >&2; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
else
    SUDO=()
fi

# --- Debian packages ----------------------------------------------------------

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    if [[ $status != installed ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    log "installing ${missing[*]}"
    "${SUDO[@]}" apt-get update -qq >/dev/null
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- containerd 1.7 from trixie, unpacked privately ---------------------------

# Prints the archive URI of the machine's main Debian suite (not -security or
# -updates), taken from its own apt configuration so no mirror is hard-coded.
# Call it in a subshell ($(...)): it changes shell options.
main_archive_uri() {
    local codename="$1" file uris suites line
    shopt -s nullglob
    for file in /etc/apt/sources.list.d/*.sources; do
        # deb822: stanzas separated by blank lines; keep URIs and Suites per stanza.
        uris="" suites=""
        while IFS= read -r line || [[ -n $line ]]; do
            case "$line" in
                '')
                    if [[ -n $uris && " $suites " == *" $codename "* ]]; then
                        echo "${uris%% *}"
                        return 0
                    fi
                    uris="" suites=""
                    ;;
                URIs:*) uris=$(echo "${line#URIs:}" | xargs) ;;
                Suites:*) suites=$(echo "${line#Suites:}" | xargs) ;;
            esac
        done <"$file"
        if [[ -n $uris && " $suites " == *" $codename "* ]]; then
            echo "${uris%% *}"
            return 0
        fi
    done
    # One-line format: "deb [options] URI suite components...".
    if [[ -f /etc/apt/sources.list ]]; then
        awk -v cn="$codename" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == cn) { print $i; exit }
            }' /etc/apt/sources.list | grep . && return 0
    fi
    return 1
}

if [[ ! -x $PREFIX17/usr/bin/containerd ]]; then
    log "fetching containerd 1.7 from Debian trixie into $PREFIX17"
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "cannot tell this machine's Debian codename from /etc/os-release"
    uri=$(main_archive_uri "$codename") ||
        die "no apt source for suite '$codename' in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list"
    [[ -f $KEYRING ]] || die "$KEYRING is missing (package debian-archive-keyring)"

    work=$(mktemp -d /tmp/ctrpull-trixie.XXXXXX)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
    cat >"$work/trixie.sources" <<EOF
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: $KEYRING
EOF
    # apt drops privileges to _apt for downloads; let it write here so it does not
    # fall back to unsandboxed downloads with a warning.
    chmod 0755 "$work"
    if id _apt >/dev/null 2>&1; then
        "${SUDO[@]}" chown -R _apt "$work/lists" "$work/cache"
        "${SUDO[@]}" chmod 0777 "$work"
    fi
    apt_private=(
        -o "Dir::Etc::SourceList=$work/trixie.sources"
        -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$work/lists"
        -o "Dir::Cache=$work/cache"
        -o Dir::Cache::pkgcache=
        -o Dir::Cache::srcpkgcache=
    )
    "${SUDO[@]}" apt-get -qq "${apt_private[@]}" update >/dev/null
    (cd "$work" && "${SUDO[@]}" apt-get -qq "${apt_private[@]}" download containerd >/dev/null)
    debs=("$work"/containerd_*.deb)
    [[ ${#debs[@]} -gt 0 && -f ${debs[0]} ]] || die "apt-get download containerd (trixie) produced no .deb in $work"
    "${SUDO[@]}" mkdir -p "$PREFIX17"
    "${SUDO[@]}" dpkg -x "${debs[0]}" "$PREFIX17"
    [[ -x $PREFIX17/usr/bin/containerd ]] || die "$PREFIX17/usr/bin/containerd missing after dpkg -x ${debs[0]}"
    log "unpacked $(basename "${debs[0]}")"
    rm -rf "$work"
    trap - EXIT
fi

# --- report -------------------------------------------------------------------

echo "containerd 1.6: $(/usr/bin/containerd --version)"
echo "containerd 1.7: $("$PREFIX17/usr/bin/containerd" --version)"
echo "runc:           $(runc --version | head -n1)"
echo "docker-registry: $(/usr/bin/docker-registry --version)"
