#!/usr/bin/env bash
# Writes what a secured cluster needs into DIR (default deploy/secrets/), never into an image:
#   ca.crt              the CA that signed the nodes' certificate (give it to clients: tls=)
#   tls.crt, tls.key    the nodes' certificate and key (-Z -o ssl_chain_cert=…,ssl_key=…)
#   authfile            memcached's -Y file: admin:<password> and app:<password>
#   admin.password, app.password   the same passwords, for the CLI and the application
# The certificate names every place the nodes are reached at: the compose services, the
# Kubernetes StatefulSet's pods (*.ringcache, *.ringcache.NAMESPACE.svc.cluster.local),
# localhost and 127.0.0.1, plus EXTRA_NAMES (space-separated DNS names).
# Needs openssl. Existing files are kept: delete DIR to start over.
set -euo pipefail
DIR=${1:-deploy/secrets}
NAMESPACE=${NAMESPACE:-default}
mkdir -p "$DIR"
cd "$DIR"
if [ -e tls.crt ]; then
    echo "$DIR already holds secrets; delete it to make new ones" >&2
    exit 0
fi
san="DNS:localhost,IP:127.0.0.1,DNS:node1,DNS:node2,DNS:node3,DNS:*.ringcache"
san="$san,DNS:*.ringcache.$NAMESPACE.svc,DNS:*.ringcache.$NAMESPACE.svc.cluster.local"
for name in ${EXTRA_NAMES:-}; do san="$san,DNS:$name"; done
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=ringcache CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=ringcache" -keyout tls.key -out tls.csr 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$san" > ext.cnf
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile ext.cnf -out tls.crt 2>/dev/null
rm -f tls.csr ext.cnf ca.srl
password() { openssl rand -hex 24; }
password > admin.password
password > app.password
printf 'admin:%s\napp:%s\n' "$(cat admin.password)" "$(cat app.password)" > authfile
# The node runs as uid 10001 in its container: compose bind-mounts these files as they are.
chmod 0644 ca.crt tls.crt tls.key authfile admin.password app.password
chmod 0600 ca.key
echo "wrote ca.crt tls.crt tls.key authfile admin.password app.password into $DIR"
