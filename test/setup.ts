import fc from 'fast-check';

// fast-check's default size ('small') caps every generated array, string and
// typed array at about 10 elements, whatever its maxLength says: a property
// over "up to 600 cache operations" or "up to 3000 bytes" would only ever see
// ten. Every maxLength in these tests is the range the test means to cover,
// so let it: an arbitrary with an explicit maxLength generates up to it (one
// without keeps the small default).
fc.configureGlobal({ defaultSizeToMaxWhenMaxSpecified: true });
