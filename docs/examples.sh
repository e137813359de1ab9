#!/usr/bin/env bash
# Every HTTP route of remus-compress, with curl: a checkpoint controller by hand.
#   bash docs/examples.sh http://127.0.0.1:7000 http://127.0.0.1:7001
# after starting a sender (remus-compress serve) and a receiver
# (remus-compress receive --listen). test/readme.test.ts runs this script.
set -euo pipefail
S=${1:?sender base URL, e.g. http://127.0.0.1:7000}
R=${2:?receiver base URL, e.g. http://127.0.0.1:7001}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# One field of the JSON object on stdin.
field() { node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(JSON.parse(s)[process.argv[1]]))' "$1"; }

# Two epoch bodies (RMTR epoch records, ../shared/TRACE.md): epoch 0 holds
# pages 0..3 (page 0 all zero), epoch 1 changes one word of page 2.
node -e '
const fs = require("node:fs");
const PS = 4096;
function record(epoch, pages) {
  const n = pages.length, kinds = 16 + 8 * n, start = Math.ceil((kinds + n) / 8) * 8;
  const b = Buffer.alloc(start + n * PS); // kinds 0: normal pages
  b.write("EPCH", 0, "latin1"); b.writeUInt32LE(epoch, 4); b.writeUInt32LE(n, 8);
  pages.forEach(([pfn, page], i) => { b.writeBigUInt64LE(BigInt(pfn), 16 + 8 * i); page.copy(b, start + i * PS); });
  return b;
}
const page2 = Buffer.alloc(PS, 3); page2.writeUInt32LE(0xdeadbeef, 100);
fs.writeFileSync("epoch0.bin", record(0, [[0, Buffer.alloc(PS)], [1, Buffer.alloc(PS, 1)], [2, Buffer.alloc(PS, 3)], [3, Buffer.alloc(PS, 7)]]));
fs.writeFileSync("epoch1.bin", record(1, [[2, page2]]));
fs.writeFileSync("page2.expected", page2);
'

# Sender: liveness, then a stream (every field optional).
curl -fsS "$S/health"; echo
stream=$(curl -fsS -X POST "$S/v1/streams" -H 'content-type: application/json' -d '{"cacheBytes": 33554432}' | field id)
echo "stream $stream"

# Epoch 0 in, its frames out (saved to a file here; a controller forwards them as they arrive).
curl -fsS -X POST "$S/v1/streams/$stream/epochs" -H 'content-type: application/octet-stream' \
     --data-binary @epoch0.bin -o epoch0.frames

# Receiver: an image, then the frames; the receiver commits epoch 0.
image=$(curl -fsS -X POST "$R/v1/images" -H 'content-type: application/json' -d '{"pageSize": 4096}' | field id)
echo "image $image"
curl -fsS -X POST "$R/v1/images/$image/frames" -H 'content-type: application/x-remus-frames' \
     --data-binary @epoch0.frames; echo

# Epoch 1 is sent, but say its frames never reached the receiver: abort it at
# the sender (its pages leave the cache), then send it again and forward it.
curl -fsS -X POST "$S/v1/streams/$stream/epochs" -H 'content-type: application/octet-stream' \
     --data-binary @epoch1.bin -o epoch1.frames
curl -fsS -X POST "$S/v1/streams/$stream/epochs/1/abort"; echo
curl -fsS -X POST "$S/v1/streams/$stream/epochs" -H 'content-type: application/octet-stream' \
     --data-binary @epoch1.bin -o epoch1.frames
curl -fsS -X POST "$R/v1/images/$image/frames" -H 'content-type: application/x-remus-frames' \
     --data-binary @epoch1.frames; echo

# What the sender knows: the stream, its counters, all streams, Prometheus metrics, the API.
curl -fsS "$S/v1/streams/$stream"; echo
curl -fsS "$S/v1/streams/$stream/stats"; echo
curl -fsS "$S/v1/streams"; echo
curl -fsS "$S/metrics" | grep -E '^remus_(pages_total|bytes_out_total|epochs_committed) '
curl -fsS "$S/openapi.json" -o openapi.json

# What the receiver holds: state, image digest, one page's bytes (checked).
curl -fsS "$R/v1/images/$image"; echo
curl -fsS "$R/v1/images/$image/digest"; echo
curl -fsS "$R/v1/images/$image/pages/2" -o page2.bin
cmp page2.bin page2.expected && echo "page 2 on the receiver is the page sent"

# Forget the sender's cache (the next epoch is a RESYNC epoch), then clean up.
curl -fsS -X POST "$S/v1/streams/$stream/reset"; echo
curl -fsS -X DELETE "$S/v1/streams/$stream"
curl -fsS -X DELETE "$R/v1/images/$image"
echo "done"
