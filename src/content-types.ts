/** Body of POST /v1/streams/:id/epochs: one RMTR epoch record (TRACE.md). */
export const EPOCH_CONTENT_TYPE = 'application/octet-stream';
/** Frames, concatenated (docs/FORMAT.md): the sender's answer and the receiver's input. */
export const FRAMES_CONTENT_TYPE = 'application/x-remus-frames';
