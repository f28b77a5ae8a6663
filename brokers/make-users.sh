#!/bin/sh
# Create the password file and ACL of a secure EVC broker (see README.md).
#
#   make-users.sh fog   OUTDIR SITE GATEWAY DEVICE...     one site's fog broker
#   make-users.sh cloud OUTDIR SITE:GATEWAY... -- WORKER... the cloud broker
#
# Every user gets a random password. OUTDIR/passwd (hashed, for password_file), OUTDIR/acl (for
# acl_file) and OUTDIR/credentials (user:password in clear, mode 0600: hand each device or
# gateway its own line, then delete the file) are written.
set -eu
usage() { sed -n '2,9p' "$0" >&2; exit 2; }
[ $# -ge 3 ] || usage
here=$(cd "$(dirname "$0")" && pwd)
tier=$1 out=$2
shift 2
mkdir -p "$out"
umask 077
: >"$out/credentials"
: >"$out/acl"
add_user() { printf '%s:%s\n' "$1" "$(openssl rand -hex 16)" >>"$out/credentials"; }
render() { # template, then name=value pairs: fills in $name placeholders, $$ becomes $
  tpl=$1; shift; script='s/\$\$/\x01/g;'
  for kv in "$@"; do script="$script s/\\\$${kv%%=*}/${kv#*=}/g;"; done
  sed -e "$script" -e 's/\x01/$/g' "$here/$tpl" >>"$out/acl"
}
case $tier in
  fog)
    [ $# -ge 2 ] || usage
    site=$1 gateway=$2; shift 2
    render fog.acl.template "site=$site" "gateway=$gateway"
    add_user "$gateway"
    for device in "$@"; do add_user "$device"; done ;;
  cloud)
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
      site=${1%%:*} gateway=${1#*:}; shift
      [ "$site" != "$gateway" ] || usage
      render cloud-gateway.acl.template "site=$site" "gateway=$gateway"; echo >>"$out/acl"
      add_user "$gateway"
    done
    [ $# -gt 0 ] && shift
    for worker in "$@"; do
      render cloud-worker.acl.template "worker=$worker"; echo >>"$out/acl"
      add_user "$worker"
    done ;;
  *) usage ;;
esac
cp "$out/credentials" "$out/passwd"
mosquitto_passwd -U "$out/passwd"
echo "wrote $out/passwd $out/acl $out/credentials" >&2
