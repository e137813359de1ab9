# Shared by bench/capture-*.sh (sourced, from the project root): the capture
# into a trace and the verifying replay, the same for every program.

# Prefix each line read with the milliseconds since the first one.
stamp() {
  local t0=${EPOCHREALTIME/./} t line
  while IFS= read -r line; do
    t=${EPOCHREALTIME/./}
    printf '+%d ms %s\n' $(((t - t0) / 1000)) "$line"
  done
}

# capture_trace PID TRACE LOG: EPOCHS checkpoints of PID every INTERVAL_MS
# into TRACE, its per-epoch progress (pages, pause) stamped into LOG. The
# capture runs at a higher priority, so that its own work does not stretch
# the interval; it writes TRACE.partial and renames it when whole, so that
# a reader of the previous trace keeps reading that one.
capture_trace() {
  local pid=$1 trace=$2 log=$3
  { nice -n -10 node dist/bench/capture.js --pid "$pid" --epochs "$EPOCHS" --interval-ms "$INTERVAL_MS" --out "$trace.partial" \
    2>&1 1>&3 | stamp | tee "$log" >&2; } 3>&1
  mv -f "$trace.partial" "$trace"
}

# verify_replay TRACE: replay it through a sender and a receiver, print a
# summary, and fail unless the receiver's image equals the trace's.
verify_replay() {
  local trace=$1 summary
  # A mismatch exits 1 but still prints its summary, which decides below.
  summary=$(node dist/src/cli.js replay "$trace" --json) || true
  printf '%s' "$summary" | node -e '
    let text = "";
    process.stdin.on("data", (c) => (text += c)).on("end", () => {
      const s = JSON.parse(text);
      const dirty = s.epochs.filter((e) => e.epoch > 0).map((e) => e.pages);
      console.log(`trace: ${process.argv[1]}, ${require("fs").statSync(process.argv[1]).size} bytes`);
      console.log(`epochs: ${s.epochs.length}; pages in epoch 0: ${s.epochs[0].pages}; final image: ${s.imagePages} pages`);
      console.log(`dirty pages per epoch: ${dirty.join(" ")}`);
      console.log(`dirty epochs: ${s.dirty.pages} pages, ${s.dirty.bytesIn} -> ${s.dirty.bytesOut} bytes, ratio ${s.dirty.ratio.toFixed(4)}`);
      console.log(`all epochs: ratio ${s.total.ratio.toFixed(4)}; imageEqual: ${s.imageEqual}`);
      process.exitCode = s.imageEqual ? 0 : 1;
    });
  ' "$trace"
}
