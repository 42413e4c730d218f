// A tar archive (POSIX ustar, with pax records for long names and large
// files) made as a Blob of parts: each File stays on disk and is read only
// as the upload sends it, so a 1 GiB file never sits in page memory.

const encoder = new TextEncoder();
const BLOCK = 512;
/// Largest size the ustar size field holds (11 octal digits).
const USTAR_MAX_SIZE = 0o77777777777;

function octal(value, width) {
  // width includes the terminating NUL.
  return value.toString(8).padStart(width - 1, "0") + "\0";
}

function header(name, size, type, mtime, prefix = "") {
  const block = new Uint8Array(BLOCK);
  const put = (offset, width, text) => {
    const bytes = typeof text === "string" ? encoder.encode(text) : text;
    block.set(bytes.subarray(0, width), offset);
  };
  put(0, 100, name);
  put(100, 8, octal(0o644, 8));
  put(108, 8, octal(0, 8));
  put(116, 8, octal(0, 8));
  put(124, 12, octal(Math.min(size, USTAR_MAX_SIZE), 12));
  put(136, 12, octal(Math.floor(mtime / 1000), 12));
  put(148, 8, "        ");
  put(156, 1, type);
  put(257, 6, "ustar\0");
  put(263, 2, "00");
  put(345, 155, prefix);
  let sum = 0;
  for (const b of block) sum += b;
  put(148, 8, sum.toString(8).padStart(6, "0") + "\0 ");
  return block;
}

/// Splits a UTF-8 path into ustar's prefix and name fields, or null when it
/// does not fit them.
function split(path) {
  const bytes = encoder.encode(path);
  if (bytes.length <= 100) return { prefix: "", name: path };
  for (let i = path.indexOf("/"); i >= 0; i = path.indexOf("/", i + 1)) {
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (encoder.encode(prefix).length <= 155 && encoder.encode(name).length <= 100 && name) return { prefix, name };
  }
  return null;
}

/// A pax extended header record: "<len> key=value\n", len counting itself.
function paxRecord(key, value) {
  const body = ` ${key}=${value}\n`;
  const bodyLength = encoder.encode(body).length;
  let length = bodyLength + String(bodyLength).length;
  if (String(length).length !== String(bodyLength).length) length += 1;
  return `${length}${body}`;
}

function padding(size) {
  const rest = size % BLOCK;
  return rest ? new Uint8Array(BLOCK - rest) : null;
}

/// entries: [{ path, blob, mtime? }] -> { blob, offsets }, where offsets[i]
/// is where entry i's data ends in the archive (for per-file progress).
export function tarBlob(entries) {
  const parts = [];
  const ends = [];
  let offset = 0;
  const push = (part) => {
    parts.push(part);
    offset += part.size ?? part.length;
  };
  for (const { path, blob, mtime } of entries) {
    const when = mtime ?? Date.now();
    let fields = split(path);
    if (!fields || blob.size > USTAR_MAX_SIZE) {
      const records = encoder.encode(
        (fields ? "" : paxRecord("path", path)) + (blob.size > USTAR_MAX_SIZE ? paxRecord("size", String(blob.size)) : ""),
      );
      push(header("PaxHeader", records.length, "x", when));
      push(records);
      const pad = padding(records.length);
      if (pad) push(pad);
      fields = fields ?? { prefix: "", name: path.slice(-100) };
    }
    push(header(fields.name, blob.size, "0", when, fields.prefix));
    push(blob);
    ends.push(offset);
    const pad = padding(blob.size);
    if (pad) push(pad);
  }
  push(new Uint8Array(BLOCK * 2));
  return { blob: new Blob(parts, { type: "application/x-tar" }), ends };
}

/// A batch that removes `paths` (and writes nothing), as one transaction.
export function removalBlob(paths) {
  const doc = new Blob([JSON.stringify({ remove: paths })], { type: "application/json" });
  return tarBlob([{ path: "_turserver/batch.json", blob: doc }]).blob;
}
