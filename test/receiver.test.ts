import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FrameError, ServiceError } from '../src/errors.js';
import { encodeAbortFrame, FRAME_FIELD, readU32, writeU32 } from '../src/frames.js';
import { FileImage, MemoryImage, Receiver, type ImageStore } from '../src/receiver.js';
import { FLAG_ABORT, FLAG_LAST, FLAG_RESYNC, FRAME_HEADER_BYTES, RECORD_REMUS, RECORD_ZERO } from '../src/wire.js';
import {
  Prng,
  SenderModel,
  buildFrame,
  concat,
  epochDigest,
  epochFrames,
  recordBytes,
  reseal,
  type RecordSpec,
  expectImage,
  receiverSnapshot,
  refusal,
} from './receiver-frames.js';

const PS = 4096;
const HIGH_PFN = 2 ** 40 + 5;

interface Scenario {
  rx: Receiver;
  model: SenderModel;
  rng: Prng;
  /** Epoch 1: the RESYNC epoch, applied. */
  f1: Uint8Array[];
  /** Epoch 2: a delta epoch in three frames, not yet applied. */
  r2: RecordSpec[];
  f2: Uint8Array[];
}

function applyAll(rx: Receiver, frames: Uint8Array[]): void {
  for (const f of frames) rx.applyFrame(f);
}

/** A receiver that committed RESYNC epoch 1 (40 pages incl. zero pages and a pfn above 2^32), and epoch 2's frames. */
function scenario(pageSize = PS, image: ImageStore = new MemoryImage(pageSize)): Scenario {
  const rng = new Prng(7);
  const model = new SenderModel(pageSize);
  const rx = new Receiver({ pageSize, image });
  const pfns = [...Array.from({ length: 38 }, (_, i) => i * 3), HIGH_PFN, 2 ** 33];
  const changes: Array<[number, Uint8Array]> = pfns.map((pfn, i) => [pfn, i % 9 === 4 ? new Uint8Array(pageSize) : rng.page(pageSize)]);
  const r1 = model.records(changes);
  const f1 = epochFrames(r1, { epoch: 1, pageSize, resync: true, recordsPerFrame: 16 });
  applyAll(rx, f1);
  model.commit(1, r1, true);
  const r2 = model.records(epoch2Changes(model, rng));
  const f2 = epochFrames(r2, { epoch: 2, pageSize, recordsPerFrame: 5 });
  return { rx, model, rng, f1, r2, f2 };
}

/** Twelve changes: small deltas, an unchanged page, a page that became zero, a zero page that got data, new pfns. */
function epoch2Changes(model: SenderModel, rng: Prng): Array<[number, Uint8Array]> {
  const ps = model.pageSize;
  const page = (pfn: number): Uint8Array => model.pages.get(pfn)!;
  return [
    [0, rng.touch(page(0), 3)],
    [3, rng.touch(page(3), 200)],
    [6, Uint8Array.from(page(6))],
    [HIGH_PFN, rng.touch(page(HIGH_PFN), 1)],
    [9, new Uint8Array(ps)],
    [12, rng.page(ps)],
    [1000, rng.page(ps)],
    [1001, new Uint8Array(ps)],
    [15, rng.touch(page(15), 2)],
    [18, rng.touch(page(18), 1)],
    [21, rng.touch(page(21), 50)],
    [2 ** 47, rng.page(ps)],
  ];
}



/** The frame is refused with `code`, and image, committed epoch and staging are as before. */
function expectRefused(rx: Receiver, frame: Uint8Array, code: string): FrameError {
  const before = receiverSnapshot(rx);
  const err = refusal(rx, frame);
  expect(err.code, err.message).toBe(code);
  expect(receiverSnapshot(rx)).toEqual(before);
  return err;
}

function edited(frame: Uint8Array, edit: (f: Uint8Array) => void, sealAgain = true): Uint8Array {
  const copy = Uint8Array.from(frame);
  edit(copy);
  return sealAgain ? reseal(copy) : copy;
}

function payloadOf(frame: Uint8Array): Uint8Array {
  return frame.subarray(FRAME_HEADER_BYTES);
}

/** Frame 1 of epoch 2 with these records in place of the real ones. */
function frame1(records: Uint8Array[], recordCount = records.length): Uint8Array {
  return buildFrame({ epoch: 2, sequence: 1, recordCount }, concat(records));
}

describe('Receiver: applying epochs', () => {
  it('applies a RESYNC epoch then delta epochs, every page right', () => {
    const { rx, model, rng, r2, f2 } = scenario();
    expect(rx.committedEpoch).toBe(1);
    expectImage(rx, model);
    expect(f2.length).toBe(3);

    applyAll(rx, f2);
    model.commit(2, r2, false);
    expectImage(rx, model);

    const r3 = model.records([...model.pages.keys()].slice(0, 30).map((pfn) => [pfn, rng.touch(model.pages.get(pfn)!, 4)]));
    applyAll(rx, epochFrames(r3, { epoch: 3, pageSize: PS, recordsPerFrame: 7 }));
    model.commit(3, r3, false);
    expectImage(rx, model);
  });

  it('stages an epoch over several applyFrame calls and touches the image only at LAST', () => {
    const { rx, model, r2, f2 } = scenario();
    const before = rx.imageDigest();
    const r0 = rx.applyFrame(f2[0]);
    expect(r0).toEqual({ epoch: 2, sequence: 0, records: 5, committed: false, aborted: false });
    expect(rx.stagingState).toEqual({ epoch: 2, resync: false, nextSequence: 1, records: 5 });
    rx.applyFrame(f2[1]);
    expect(rx.stagingState).toEqual({ epoch: 2, resync: false, nextSequence: 2, records: 10 });
    expect(rx.imageDigest().equals(before)).toBe(true);
    expect(rx.committedEpoch).toBe(1);
    const last = rx.applyFrame(f2[2]);
    expect(last).toMatchObject({ epoch: 2, sequence: 2, records: 2, committed: true });
    expect(rx.stagingState).toBeNull();
    model.commit(2, r2, false);
    expectImage(rx, model);
  });

  it('commits a RESYNC epoch as the whole image', () => {
    const { rx, model, rng } = scenario();
    const kept = [3, 1000, HIGH_PFN];
    const r = model.records(kept.map((pfn) => [pfn, model.pages.has(pfn) ? rng.touch(model.pages.get(pfn)!, 2) : rng.page(PS)]));
    applyAll(rx, epochFrames(r, { epoch: 40, pageSize: PS, resync: true, recordsPerFrame: 2 }));
    model.commit(40, r, true);
    expectImage(rx, model);
    expect(rx.pageCount).toBe(3);
  });

  it('commits an empty epoch (one LAST frame without records)', () => {
    const { rx, model } = scenario();
    const frames = epochFrames([], { epoch: 2, pageSize: PS });
    expect(frames.length).toBe(1);
    expect(rx.applyFrame(frames[0]).committed).toBe(true);
    model.commit(2, [], false);
    expectImage(rx, model);
  });

  it('accepts only a RESYNC epoch before anything is committed', () => {
    const rx = new Receiver({ pageSize: PS, image: new MemoryImage(PS) });
    const model = new SenderModel(PS);
    const r = model.records([[5, new Prng(1).page(PS)]]);
    const err = expectRefused(rx, epochFrames(r, { epoch: 0, pageSize: PS })[0], 'FRAME_UNEXPECTED_EPOCH');
    expect(err.statusCode).toBe(409);
    rx.applyFrame(epochFrames(r, { epoch: 0, pageSize: PS, resync: true })[0]);
    expect(rx.committedEpoch).toBe(0);
  });

  it('restarts a partly staged epoch at sequence 0', () => {
    const { rx, model, r2, f2 } = scenario();
    rx.applyFrame(f2[0]);
    rx.applyFrame(f2[1]);
    applyAll(rx, f2);
    model.commit(2, r2, false);
    expectImage(rx, model);
  });

  it('keeps the older staging when a restarting frame is refused', () => {
    const { rx, model, r2, f2 } = scenario();
    rx.applyFrame(f2[0]);
    rx.applyFrame(f2[1]);
    const badRestart = edited(f2[0], (f) => {
      f[FRAME_HEADER_BYTES] = 9; // unknown record type in the first record
    });
    expectRefused(rx, badRestart, 'FRAME_BAD_RECORD');
    expect(rx.stagingState).toEqual({ epoch: 2, resync: false, nextSequence: 2, records: 10 });
    rx.applyFrame(f2[2]);
    model.commit(2, r2, false);
    expectImage(rx, model);
  });

  it('drops the staged epoch on an ABORT frame and accepts the epoch again', () => {
    const { rx, model, r2, f2 } = scenario();
    const before = rx.imageDigest();
    rx.applyFrame(f2[0]);
    const result = rx.applyFrame(encodeAbortFrame(2, 1, 12, 0, 'ENCODE_FAILED', 'worker 3 died'));
    expect(result).toMatchObject({
      epoch: 2,
      aborted: true,
      committed: false,
      abort: { code: 'FRAME_ABORTED', senderCode: 'ENCODE_FAILED', senderMessage: 'worker 3 died' },
    });
    expect(rx.stagingState).toBeNull();
    expect(rx.imageDigest().equals(before)).toBe(true);
    applyAll(rx, f2);
    model.commit(2, r2, false);
    expectImage(rx, model);
  });

  it('refuses an ABORT for an epoch it would not accept', () => {
    const { rx } = scenario();
    expectRefused(rx, encodeAbortFrame(9, 0, 12, 0, 'X', 'y'), 'FRAME_UNEXPECTED_EPOCH');
  });
});

describe('Receiver: refusals leave image, epoch and staging as they were', () => {
  // Each case: epoch 2 frame 0 is staged, then the bad frame arrives in place
  // of frame 1; afterwards the real frames 1 and 2 must still commit epoch 2.
  const cases: Array<{ name: string; code: string; frame: (s: Scenario) => Uint8Array }> = [
    { name: 'bad magic', code: 'FRAME_BAD_MAGIC', frame: (s) => edited(s.f2[1], (f) => (f[0] = 0x58), false) },
    { name: 'bad version', code: 'FRAME_BAD_VERSION', frame: (s) => edited(s.f2[1], (f) => (f[FRAME_FIELD.version] = 2)) },
    { name: 'unknown flag bit', code: 'FRAME_BAD_FLAGS', frame: (s) => edited(s.f2[1], (f) => (f[FRAME_FIELD.flags] |= 0x08)) },
    { name: 'ABORT with LAST', code: 'FRAME_BAD_FLAGS', frame: (s) => edited(s.f2[1], (f) => (f[FRAME_FIELD.flags] = FLAG_ABORT | FLAG_LAST)) },
    { name: 'RESYNC bit differing from frame 0', code: 'FRAME_BAD_FLAGS', frame: (s) => edited(s.f2[1], (f) => (f[FRAME_FIELD.flags] |= FLAG_RESYNC)) },
    { name: 'unknown codec', code: 'FRAME_BAD_CODEC', frame: (s) => edited(s.f2[1], (f) => (f[FRAME_FIELD.codec] = 2)) },
    { name: 'other page size', code: 'FRAME_PAGE_SIZE_MISMATCH', frame: (s) => edited(s.f2[1], (f) => (f[FRAME_FIELD.pageShift] = 13)) },
    {
      name: 'payloadLength over the frame limit',
      code: 'FRAME_TOO_LARGE',
      frame: (s) => edited(s.f2[1], (f) => writeU32(f, FRAME_FIELD.payloadLength, 16 * 1024 * 1024), false),
    },
    { name: 'shorter than the header', code: 'FRAME_TRUNCATED', frame: (s) => s.f2[1].slice(0, 40) },
    { name: 'shorter than payloadLength', code: 'FRAME_TRUNCATED', frame: (s) => s.f2[1].slice(0, s.f2[1].length - 1) },
    { name: 'longer than payloadLength', code: 'FRAME_BAD_LENGTH', frame: (s) => concat([s.f2[1], new Uint8Array(1)]) },
    { name: 'payload bit flipped', code: 'FRAME_BAD_CRC', frame: (s) => edited(s.f2[1], (f) => (f[f.length - 3] ^= 0x10), false) },
    { name: 'header bit flipped', code: 'FRAME_BAD_CRC', frame: (s) => edited(s.f2[1], (f) => (f[FRAME_FIELD.epochDigest + 5] ^= 1), false) },
    { name: 'CRC bit flipped', code: 'FRAME_BAD_CRC', frame: (s) => edited(s.f2[1], (f) => (f[FRAME_FIELD.crc] ^= 1), false) },
    {
      name: 'epochPageCount on a frame that is not LAST',
      code: 'FRAME_BAD_HEADER',
      frame: (s) => edited(s.f2[1], (f) => writeU32(f, FRAME_FIELD.epochPageCount, 12)),
    },
    { name: 'epoch neither next nor RESYNC', code: 'FRAME_UNEXPECTED_EPOCH', frame: () => buildFrame({ epoch: 3, sequence: 0, recordCount: 0 }, new Uint8Array(0)) },
    { name: 'an epoch already committed', code: 'FRAME_UNEXPECTED_EPOCH', frame: () => buildFrame({ epoch: 1, sequence: 0, recordCount: 0 }, new Uint8Array(0)) },
    { name: 'later frame of an unstaged epoch', code: 'FRAME_UNEXPECTED_EPOCH', frame: (s) => edited(s.f2[1], (f) => writeU32(f, FRAME_FIELD.epoch, 7)) },
    { name: 'a skipped sequence', code: 'FRAME_UNEXPECTED_SEQUENCE', frame: (s) => s.f2[2] },
    { name: 'a sequence from the future', code: 'FRAME_UNEXPECTED_SEQUENCE', frame: (s) => edited(s.f2[1], (f) => writeU32(f, FRAME_FIELD.sequence, 5)) },
    { name: 'unknown record type', code: 'FRAME_BAD_RECORD', frame: () => frame1([recordBytes({ pfn: 24, type: 3, body: new Uint8Array(0) })]) },
    {
      name: 'zero-length run',
      code: 'FRAME_BAD_RECORD',
      frame: () => frame1([recordBytes({ pfn: 24, type: RECORD_REMUS, body: Uint8Array.of(0x81, 0x00) })]),
    },
    {
      name: 'run past the page end',
      code: 'FRAME_BAD_RECORD',
      frame: () => frame1([recordBytes({ pfn: 24, type: RECORD_REMUS, body: Uint8Array.of(...new Array(8).fill(0xff), 0x89) })]),
    },
    {
      name: 'copy run cut short',
      code: 'FRAME_BAD_RECORD',
      frame: () => frame1([recordBytes({ pfn: 24, type: RECORD_REMUS, body: Uint8Array.of(0x02, 1, 2, 3, 4) })]),
    },
    {
      name: 'FULL page cut short',
      code: 'FRAME_BAD_RECORD',
      frame: () => frame1([recordBytes({ pfn: 1000, type: RECORD_REMUS, body: new Uint8Array(100).fill(0x80) })]),
    },
    {
      name: 'REMUS record without a body',
      code: 'FRAME_BAD_RECORD',
      frame: () => frame1([recordBytes({ pfn: 24, type: RECORD_REMUS, body: new Uint8Array(0) })]),
    },
    { name: 'fewer records than recordCount', code: 'FRAME_BAD_RECORD', frame: (s) => edited(s.f2[1], (f) => writeU32(f, FRAME_FIELD.recordCount, 6)) },
    {
      name: 'recordCount that cannot fit the payload',
      code: 'FRAME_BAD_RECORD',
      frame: (s) => edited(s.f2[1], (f) => writeU32(f, FRAME_FIELD.recordCount, readU32(f, FRAME_FIELD.payloadLength))),
    },
    {
      name: 'bytes after the last record',
      code: 'FRAME_TRAILING_BYTES',
      frame: (s) => buildFrame({ epoch: 2, sequence: 1, recordCount: 5 }, concat([payloadOf(s.f2[1]), Uint8Array.of(0)])),
    },
    {
      name: 'fewer recordCount than records',
      code: 'FRAME_TRAILING_BYTES',
      frame: (s) => edited(s.f2[1], (f) => writeU32(f, FRAME_FIELD.recordCount, 4)),
    },
    {
      name: 'duplicate pfn within the frame',
      code: 'FRAME_DUPLICATE_PFN',
      frame: () => frame1([recordBytes({ pfn: 30, type: RECORD_ZERO, body: new Uint8Array(0) }), recordBytes({ pfn: 30, type: RECORD_ZERO, body: new Uint8Array(0) })]),
    },
    {
      name: 'duplicate pfn of an earlier frame',
      code: 'FRAME_DUPLICATE_PFN',
      frame: (s) => frame1([recordBytes({ pfn: s.r2[0].pfn, type: RECORD_ZERO, body: new Uint8Array(0) })]),
    },
    {
      name: 'pfn 2^48',
      code: 'FRAME_PFN_RANGE',
      frame: () => frame1([recordBytes({ pfn: 2 ** 48, type: RECORD_ZERO, body: new Uint8Array(0) })]),
    },
    {
      name: 'pfn ULEB128 of 8 bytes',
      code: 'FRAME_PFN_RANGE',
      frame: () => frame1([Uint8Array.of(RECORD_ZERO, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01)]),
    },
    {
      name: 'EMPTY delta for a page the image lacks',
      code: 'FRAME_DELTA_WITHOUT_BASE',
      frame: () => frame1([recordBytes({ pfn: 4, type: RECORD_REMUS, body: Uint8Array.of(0x00) })]),
    },
    {
      name: 'run delta for a page the image lacks',
      code: 'FRAME_DELTA_WITHOUT_BASE',
      frame: () => frame1([recordBytes({ pfn: 4, type: RECORD_REMUS, body: Uint8Array.of(0x01, 1, 2, 3, 4, ...new Array(8).fill(0xff), 0x87) })]),
    },
    {
      name: 'ABORT payload that is not JSON',
      code: 'FRAME_BAD_ABORT',
      frame: () => buildFrame({ epoch: 2, sequence: 1, flags: FLAG_ABORT, recordCount: 0 }, Buffer.from('not json')),
    },
    {
      name: 'ABORT carrying records',
      code: 'FRAME_BAD_HEADER',
      frame: () => buildFrame({ epoch: 2, sequence: 1, flags: FLAG_ABORT, recordCount: 1 }, Buffer.from('{"code":"A","message":"b"}')),
    },
  ];

  for (const c of cases) {
    it(`${c.code}: ${c.name}`, () => {
      const s = scenario();
      s.rx.applyFrame(s.f2[0]);
      const err = expectRefused(s.rx, c.frame(s), c.code);
      expect(err.message.length).toBeGreaterThan(10);
      if (c.code.startsWith('FRAME_UNEXPECTED')) expect(err.statusCode).toBe(409);
      else expect(err.statusCode).toBe(400);
      // The corrected resend continues the staged epoch.
      s.rx.applyFrame(s.f2[1]);
      s.rx.applyFrame(s.f2[2]);
      s.model.commit(2, s.r2, false);
      expectImage(s.rx, s.model);
    });
  }

  it('wraps codec errors with the record offset in the frame', () => {
    const s = scenario();
    s.rx.applyFrame(s.f2[0]);
    const err = expectRefused(
      s.rx,
      frame1([recordBytes({ pfn: 30, type: RECORD_ZERO, body: new Uint8Array(0) }), recordBytes({ pfn: 24, type: RECORD_REMUS, body: Uint8Array.of(0x81, 0x00) })]),
      'FRAME_BAD_RECORD',
    );
    expect(err.message).toContain('record 1 (pfn 24) at byte 66');
    expect(err.message).toContain('REMUS_ZERO_RUN');
    expect(err.message).toContain('at byte 69');
  });

  it('FRAME_COUNT_MISMATCH on LAST discards the staged epoch', () => {
    const s = scenario();
    const bad = epochFrames(s.r2, { epoch: 2, pageSize: PS, recordsPerFrame: 5, epochPageCount: 11 });
    const before = s.rx.imageDigest();
    s.rx.applyFrame(bad[0]);
    s.rx.applyFrame(bad[1]);
    expect(refusal(s.rx, bad[2]).code).toBe('FRAME_COUNT_MISMATCH');
    expect(s.rx.stagingState).toBeNull();
    expect(s.rx.imageDigest().equals(before)).toBe(true);
    expect(s.rx.committedEpoch).toBe(1);
    // Only the whole epoch again is accepted.
    expect(refusal(s.rx, s.f2[2]).code).toBe('FRAME_UNEXPECTED_SEQUENCE');
    applyAll(s.rx, s.f2);
    s.model.commit(2, s.r2, false);
    expectImage(s.rx, s.model);
  });

  it('FRAME_DIGEST_MISMATCH on LAST discards the staged epoch', () => {
    const s = scenario();
    const wrong = Buffer.from(epochDigest(s.r2, PS, 2, false));
    wrong[0] ^= 1;
    const bad = epochFrames(s.r2, { epoch: 2, pageSize: PS, recordsPerFrame: 5, epochDigest: wrong });
    const before = s.rx.imageDigest();
    s.rx.applyFrame(bad[0]);
    s.rx.applyFrame(bad[1]);
    const err = refusal(s.rx, bad[2]);
    expect(err.code).toBe('FRAME_DIGEST_MISMATCH');
    expect(s.rx.stagingState).toBeNull();
    expect(s.rx.imageDigest().equals(before)).toBe(true);
    expect(s.rx.committedEpoch).toBe(1);
    applyAll(s.rx, s.f2);
    s.model.commit(2, s.r2, false);
    expectImage(s.rx, s.model);
  });

  it('a page whose record says one thing and digest another is refused (wrong page in a FULL record)', () => {
    const s = scenario();
    const lying = s.r2.map((r) => (r.pfn === 1000 ? { ...r, body: Uint8Array.of(0x80, ...new Uint8Array(PS).fill(7)) } : r));
    const frames = epochFrames(lying, { epoch: 2, pageSize: PS, recordsPerFrame: 5, epochDigest: epochDigest(s.r2, PS, 2, false) });
    s.rx.applyFrame(frames[0]);
    s.rx.applyFrame(frames[1]);
    expect(refusal(s.rx, frames[2]).code).toBe('FRAME_DIGEST_MISMATCH');
    expect(s.rx.committedEpoch).toBe(1);
  });

  it('FRAME_EPOCH_TOO_LARGE past maxEpochBytes, staging kept', () => {
    const rx = new Receiver({ pageSize: PS, image: new MemoryImage(PS), maxEpochBytes: 10 * PS });
    const model = new SenderModel(PS);
    const rng = new Prng(3);
    const r = model.records(Array.from({ length: 11 }, (_, i): [number, Uint8Array] => [i, rng.page(PS)]));
    const frames = epochFrames(r, { epoch: 0, pageSize: PS, resync: true, recordsPerFrame: 4 });
    rx.applyFrame(frames[0]);
    rx.applyFrame(frames[1]);
    expectRefused(rx, frames[2], 'FRAME_EPOCH_TOO_LARGE');
    expect(rx.stagingState).toEqual({ epoch: 0, resync: true, nextSequence: 2, records: 8 });
    const fits = model.records(Array.from({ length: 10 }, (_, i): [number, Uint8Array] => [i, rng.page(PS)]));
    applyAll(rx, epochFrames(fits, { epoch: 0, pageSize: PS, resync: true, recordsPerFrame: 4 }));
    model.commit(0, fits, true);
    expectImage(rx, model);
  });

  it('refuses a delta epoch turned into a RESYNC epoch by a resealing writer (the digest covers the bit)', () => {
    const s = scenario();
    const rx = new Receiver({ pageSize: PS, image: new MemoryImage(PS) });
    applyAll(rx, s.f1);
    const before = receiverSnapshot(rx);
    const forged = s.f2.map((f) => edited(f, (b) => (b[FRAME_FIELD.flags] |= FLAG_RESYNC)));
    for (const frame of forged.slice(0, -1)) rx.applyFrame(frame);
    // A digest mismatch discards the staged epoch; the image stays at epoch 1.
    expect(refusal(rx, forged[forged.length - 1]).code).toBe('FRAME_DIGEST_MISMATCH');
    expect(receiverSnapshot(rx)).toEqual({ ...before, staging: null });
    expect(rx.committedEpoch).toBe(1);
  });

  it('refuses frames over maxFrameBytes', () => {
    const s = scenario();
    const rx = new Receiver({ pageSize: PS, image: new MemoryImage(PS), maxFrameBytes: 256 });
    expectRefused(rx, s.f2[0], 'FRAME_TOO_LARGE');
  });
});

describe('Receiver: random corruption', () => {
  const SMALL = 512;

  it('a mutated frame is refused with FrameError and the image unchanged, or it is harmless', () => {
    const base = scenario(SMALL);
    const epoch1Digest = base.rx.imageDigest().toString('hex');
    const after = new SenderModel(SMALL);
    after.pages = new Map(base.model.pages);
    after.commit(2, base.r2, false);
    const epoch2Digest = after.imageDigest().toString('hex');

    fc.assert(
      fc.property(
        fc.nat({ max: base.f2.length - 1 }),
        fc.array(fc.record({ at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }), { minLength: 1, maxLength: 3 }),
        fc.boolean(),
        (k, mutations, sealAgain) => {
          const rx = new Receiver({ pageSize: SMALL, image: new MemoryImage(SMALL) });
          applyAll(rx, base.f1);
          for (let i = 0; i < k; i++) rx.applyFrame(base.f2[i]);
          const bad = Uint8Array.from(base.f2[k]);
          for (const m of mutations) {
            // Resealed mutations reach past the CRC; the RESYNC bit and the
            // epoch number are then caught by the epoch digest, which covers
            // them.
            bad[m.at % bad.length] ^= m.xor;
          }
          if (sealAgain) {
            try {
              reseal(bad);
            } catch (err) {
              // payloadLength was mutated past the buffer: leave the CRC as is.
              if (!(err instanceof RangeError)) throw err;
            }
          }
          const frames = [bad, ...base.f2.slice(k + 1)];
          for (const frame of frames) {
            try {
              rx.applyFrame(frame);
            } catch (err) {
              if (!(err instanceof FrameError)) throw err;
              expect(rx.imageDigest().toString('hex')).toBe(epoch1Digest);
              expect(rx.committedEpoch).toBe(1);
              break;
            }
          }
          if (rx.committedEpoch === 1) applyAll(rx, base.f2);
          expect(rx.committedEpoch).toBe(2);
          expect(rx.imageDigest().toString('hex')).toBe(epoch2Digest);
        },
      ),
      { numRuns: 400 },
    );
  });
});

describe('FileImage', () => {
  let dir: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'remus-image-'));
  });

  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('survives close and reopen: same pages, digest and committed epoch, and continues', () => {
    const path = join(dir, 'img');
    const s = scenario(PS, FileImage.open(path, PS));
    applyAll(s.rx, s.f2);
    s.model.commit(2, s.r2, false);
    expectImage(s.rx, s.model);
    const digest = s.rx.imageDigest();
    s.rx.close();

    const rx = new Receiver({ pageSize: PS, image: FileImage.open(path, PS) });
    expect(rx.committedEpoch).toBe(2);
    expect(rx.imageDigest().equals(digest)).toBe(true);
    expectImage(rx, s.model);
    expectRefused(rx, s.f2[0], 'FRAME_UNEXPECTED_EPOCH');

    const r3 = s.model.records([
      [0, s.rng.touch(s.model.pages.get(0)!, 5)],
      [77777, s.rng.page(PS)],
    ]);
    applyAll(rx, epochFrames(r3, { epoch: 3, pageSize: PS }));
    s.model.commit(3, r3, false);
    expectImage(rx, s.model);
    rx.close();

    const again = new Receiver({ pageSize: PS, image: FileImage.open(path, PS) });
    expectImage(again, s.model);
    again.close();
  });

  it('a RESYNC shrinks the file image, and the smaller image reopens', () => {
    const path = join(dir, 'img');
    const s = scenario(PS, FileImage.open(path, PS));
    const r = s.model.records([
      [5, s.rng.page(PS)],
      [2 ** 45, s.rng.page(PS)],
    ]);
    applyAll(s.rx, epochFrames(r, { epoch: 9, pageSize: PS, resync: true }));
    s.model.commit(9, r, true);
    expectImage(s.rx, s.model);
    s.rx.close();
    const rx = new Receiver({ pageSize: PS, image: FileImage.open(path, PS) });
    expectImage(rx, s.model);
    rx.close();
  });

  it('refuses to reopen with another page size', () => {
    const path = join(dir, 'img');
    FileImage.open(path, PS).close();
    let err: unknown;
    try {
      FileImage.open(path, 8192);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ServiceError);
    expect((err as ServiceError).code).toBe('IMAGE_PAGE_SIZE_MISMATCH');
  });

  it('leaves alone an existing file that is not an image', () => {
    const path = join(dir, 'precious');
    writeFileSync(path, 'not an image');
    let err: unknown;
    try {
      FileImage.open(path, PS);
    } catch (e) {
      err = e;
    }
    expect((err as ServiceError).code).toBe('IMAGE_INDEX_MISSING');
    expect(readFileSync(path, 'utf8')).toBe('not an image');
  });

  it('refuses an index that does not match its data file', () => {
    const path = join(dir, 'img');
    const s = scenario(PS, FileImage.open(path, PS));
    s.rx.close();
    truncateSync(path, PS);
    let err: unknown;
    try {
      FileImage.open(path, PS);
    } catch (e) {
      err = e;
    }
    expect((err as ServiceError).code).toBe('IMAGE_INDEX_CORRUPT');
  });

  it('a new image has no committed epoch', () => {
    const image = FileImage.open(join(dir, 'fresh'), PS);
    expect(image.committedEpoch).toBeNull();
    expect(image.size).toBe(0);
    image.close();
  });
});
