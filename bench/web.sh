#!/usr/bin/env bash
# The owner's web page on a big ledger: builds RECORDS records over CARDS
# cards (once, in DIR, with examples/gen_ledger), starts `cardd serve
# --http-listen` on it, logs in with a `web-login` link, then fetches each
# page ROUNDS times over loopback and prints, per page, the median and the
# slowest time to the first byte (the daemon's read of the brand's state on
# its writer plus the render: what "renders within 100 ms" means, issue 18).
#
#   bench/web.sh DIR [RECORDS] [CARDS] [ROUNDS]    defaults 1000000 100000 20
#
# Run it on a quiet machine (it is not part of CI).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,11p "$0" >&2; exit 1; }
dir=$1 records=${2:-1000000} cards=${3:-100000} rounds=${4:-20}
command -v curl >/dev/null || { echo "web.sh needs curl" >&2; exit 1; }
cargo build --release --quiet --bin cardd --example gen_ledger
if [ ! -d "$dir" ]; then
  ./target/release/examples/gen_ledger "$dir" "$records" "$cards" 256 2>/dev/null
fi
out=$(mktemp -d "${TMPDIR:-/tmp}/cardd-web.XXXXXX")
http=127.0.0.1:$(( 20000 + RANDOM % 20000 ))
./target/release/cardd serve --data "$dir" --listen 127.0.0.1:0 --http-listen "$http" \
  > "$out/serve" 2> "$out/log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$out"' EXIT
until grep -q "listening on" "$out/serve" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { cat "$out/log" >&2; exit 1; }
  sleep 0.1
done
addr=$(sed -n 's/^cardd listening on //p' "$out/serve")
admin() { ./target/release/cardd admin --connect "$addr" --key "$dir/owner.key" "$@"; }
link=$(admin web-login --http "$http" 2>/dev/null)
# Opening the link shows its confirmation form; posting the form as a
# browser does from that page (same-origin, with the pre-login cookie the
# page set) signs in.
form=$(curl -s -c "$out/cookies" "$link")
field() { sed -n "s/.*name=\"$1\" value=\"\([0-9a-f]*\)\".*/\1/p" <<<"$form"; }
curl -s -o /dev/null -b "$out/cookies" -c "$out/cookies" -H 'Sec-Fetch-Site: same-origin' \
  --data "token=$(field token)&check=$(field check)" "http://$http/login"
today=$(date -u +%F)
card=$(admin --json report dormant --idle-days 1 | grep -o '"card":"[0-9]*"' | head -1 | cut -d'"' -f4 || true)
pages=("/" "/settlement?from=${today:0:8}01&to=$today" "/liability" "/members" "/card?card=$card")
printf '%-40s %10s %10s\n' page median_ms max_ms
for page in "${pages[@]}"; do
  : > "$out/times"
  for _ in $(seq "$rounds"); do
    curl -s -o /dev/null -b "$out/cookies" -w '%{time_starttransfer}\n' "http://$http$page" >> "$out/times"
  done
  sort -n "$out/times" | awk -v page="$page" '
    { t[NR] = $1 * 1000 }
    END { printf "%-40s %10.1f %10.1f\n", page, t[int((NR + 1) / 2)], t[NR] }'
done
