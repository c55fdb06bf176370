/**
 * The EXIF UserComment as A1111 writes and reads its `parameters` text in JPEG and WebP files,
 * and the container plumbing to put that EXIF block into a JPEG (APP1 segment) or a WebP (RIFF
 * `EXIF` chunk, with the VP8X flag), and to find it again.
 *
 * A1111 writes `piexif.helper.UserComment.dump(text, encoding="unicode")` inside a big-endian
 * ("MM") TIFF from `piexif.dump`: the 8 bytes `UNICODE\0`, then the text in UTF-16 **big-endian**
 * (piexif's `_UNICODE = 'utf_16_be'`), no byte-order mark, no terminator. A1111 reads it back with
 * `piexif.helper.UserComment.load`, which also decodes UTF-16BE whatever the TIFF byte order. The
 * blob written here is the same: big-endian TIFF, `UNICODE\0`, UTF-16BE, so readers that take the
 * TIFF's byte order for UTF-16 (exiftool) and readers that always take big-endian (piexif) agree.
 * @module
 */
import { InvalidArgumentError } from './errors.ts';

/** The 8-byte character-code prefixes of a UserComment (EXIF 2.3, table 9). */
const PREFIX_UNICODE = Buffer.from('UNICODE\0', 'latin1');
const PREFIX_ASCII = Buffer.from('ASCII\0\0\0', 'latin1');
const PREFIX_JIS = Buffer.from('JIS\0\0\0\0\0', 'latin1');
const EXIF_HEADER = Buffer.from('Exif\0\0', 'latin1');

const TAG_EXIF_IFD = 0x8769;
const TAG_USER_COMMENT = 0x9286;
const TYPE_LONG = 4;
const TYPE_UNDEFINED = 7;

/**
 * A minimal big-endian TIFF (EXIF) block: IFD0 holding only the pointer to an Exif IFD, which
 * holds only UserComment (type 7, UNDEFINED) = `UNICODE\0` + the text in UTF-16BE.
 */
export function userCommentExif(text: string): Buffer {
  const comment = Buffer.concat([PREFIX_UNICODE, Buffer.from(text, 'utf16le').swap16()]);
  const ifd0 = 8; // after the 8-byte TIFF header
  const exifIfd = ifd0 + 2 + 12 + 4; // one entry, then the next-IFD offset
  const data = exifIfd + 2 + 12 + 4;
  const out = Buffer.alloc(data + comment.length);
  out.write('MM', 0, 'latin1');
  out.writeUInt16BE(42, 2);
  out.writeUInt32BE(ifd0, 4);
  out.writeUInt16BE(1, ifd0);
  out.writeUInt16BE(TAG_EXIF_IFD, ifd0 + 2);
  out.writeUInt16BE(TYPE_LONG, ifd0 + 4);
  out.writeUInt32BE(1, ifd0 + 6);
  out.writeUInt32BE(exifIfd, ifd0 + 10);
  out.writeUInt32BE(0, ifd0 + 14); // no IFD1
  out.writeUInt16BE(1, exifIfd);
  out.writeUInt16BE(TAG_USER_COMMENT, exifIfd + 2);
  out.writeUInt16BE(TYPE_UNDEFINED, exifIfd + 4);
  out.writeUInt32BE(comment.length, exifIfd + 6);
  out.writeUInt32BE(data, exifIfd + 10);
  out.writeUInt32BE(0, exifIfd + 14);
  comment.copy(out, data);
  return out;
}

/** Largest TIFF block a JPEG APP1 segment holds: 65535 minus the length field and `Exif\0\0`. */
export const MAX_JPEG_EXIF_BYTES = 65535 - 2 - EXIF_HEADER.length;

/**
 * Puts a TIFF (EXIF) block into a JPEG as an APP1 `Exif` segment: after SOI and a JFIF APP0
 * segment if there is one; an existing Exif APP1 segment is replaced.
 * @throws {InvalidArgumentError} the block is larger than {@link MAX_JPEG_EXIF_BYTES}.
 */
export function insertJpegExif(jpeg: Buffer, tiff: Buffer): Buffer {
  if (tiff.length > MAX_JPEG_EXIF_BYTES) {
    throw new InvalidArgumentError(
      `parameters must fit a JPEG's EXIF segment (at most ${MAX_JPEG_EXIF_BYTES} bytes, about ${Math.floor((MAX_JPEG_EXIF_BYTES - 60) / 2)} UTF-16 units); received ${tiff.length} bytes`,
    );
  }
  if (jpeg.length < 4 || jpeg[0] !== 0xff || jpeg[1] !== 0xd8) throw new InvalidArgumentError('insertJpegExif: not a JPEG (no SOI marker)');
  const app1 = Buffer.alloc(4);
  app1[0] = 0xff;
  app1[1] = 0xe1;
  app1.writeUInt16BE(2 + EXIF_HEADER.length + tiff.length, 2);
  const segment = Buffer.concat([app1, EXIF_HEADER, tiff]);
  const kept: Buffer[] = [jpeg.subarray(0, 2)];
  let pos = 2;
  let inserted = false;
  // Walk the marker segments up to SOS; drop any Exif APP1, insert ours after SOI (and JFIF).
  while (pos + 4 <= jpeg.length && jpeg[pos] === 0xff) {
    const marker = jpeg[pos + 1];
    if (marker === 0xff) {
      pos++; // fill byte
      continue;
    }
    if (marker === 0xda || marker === 0xd9 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) break;
    const len = jpeg.readUInt16BE(pos + 2);
    const end = pos + 2 + len;
    if (len < 2 || end > jpeg.length) break;
    const isJfif = marker === 0xe0 && jpeg.toString('latin1', pos + 4, pos + 9) === 'JFIF\0';
    const isExif = marker === 0xe1 && jpeg.subarray(pos + 4, pos + 10).equals(EXIF_HEADER);
    if (!inserted && !isJfif) {
      kept.push(segment);
      inserted = true;
    }
    if (!isExif) kept.push(jpeg.subarray(pos, end));
    pos = end;
  }
  if (!inserted) kept.push(segment);
  kept.push(jpeg.subarray(pos));
  return Buffer.concat(kept);
}

/** The TIFF block of a JPEG's first Exif APP1 segment, or undefined. */
export function findJpegExif(jpeg: Uint8Array): Buffer | undefined {
  const buf = Buffer.from(jpeg.buffer, jpeg.byteOffset, jpeg.byteLength);
  let pos = 2;
  while (pos + 4 <= buf.length && buf[pos] === 0xff) {
    const marker = buf[pos + 1];
    if (marker === 0xff) {
      pos++;
      continue;
    }
    if (marker === 0xda || marker === 0xd9) break;
    if ((marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) {
      pos += 2;
      continue;
    }
    const len = buf.readUInt16BE(pos + 2);
    const end = pos + 2 + len;
    if (len < 2 || end > buf.length) break;
    if (marker === 0xe1 && buf.subarray(pos + 4, pos + 10).equals(EXIF_HEADER)) return buf.subarray(pos + 10, end);
    pos = end;
  }
  return undefined;
}

interface RiffChunk {
  type: string;
  data: Buffer;
}

function riffChunks(webp: Buffer): RiffChunk[] | undefined {
  if (webp.length < 12 || webp.toString('latin1', 0, 4) !== 'RIFF' || webp.toString('latin1', 8, 12) !== 'WEBP') return undefined;
  const end = Math.min(webp.length, 8 + webp.readUInt32LE(4));
  const chunks: RiffChunk[] = [];
  let pos = 12;
  while (pos + 8 <= end) {
    const type = webp.toString('latin1', pos, pos + 4);
    const len = webp.readUInt32LE(pos + 4);
    if (pos + 8 + len > end) break;
    chunks.push({ type, data: webp.subarray(pos + 8, pos + 8 + len) });
    pos += 8 + len + (len & 1);
  }
  return chunks;
}

function riffChunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.write(type, 0, 'latin1');
  head.writeUInt32LE(data.length, 4);
  return Buffer.concat(data.length & 1 ? [head, data, Buffer.alloc(1)] : [head, data]);
}

/**
 * Puts a TIFF (EXIF) block into a WebP as its `EXIF` chunk (raw TIFF, as the WebP container
 * specification says), turning a simple (VP8/VP8L-only) file into the extended format: a VP8X
 * chunk with the EXIF flag and the canvas size `width` x `height`. An existing EXIF chunk is
 * replaced.
 */
export function insertWebpExif(webp: Buffer, tiff: Buffer, width: number, height: number): Buffer {
  const chunks = riffChunks(webp);
  if (!chunks || chunks.length === 0) throw new InvalidArgumentError('insertWebpExif: not a WebP (no RIFF WEBP header)');
  const body = chunks.filter((c) => c.type !== 'EXIF');
  let vp8x = body.find((c) => c.type === 'VP8X');
  if (!vp8x) {
    const data = Buffer.alloc(10);
    // Lossless data with alpha: keep the alpha flag (bit 28 of the VP8L header after its 0x2f signature).
    const vp8l = body.find((c) => c.type === 'VP8L');
    if (vp8l && vp8l.data.length >= 5 && vp8l.data[0] === 0x2f && vp8l.data.readUInt32LE(1) & (1 << 28)) data[0] |= 0x10;
    data.writeUIntLE(width - 1, 4, 3);
    data.writeUIntLE(height - 1, 7, 3);
    vp8x = { type: 'VP8X', data };
    body.unshift(vp8x);
  } else {
    vp8x.data = Buffer.from(vp8x.data);
  }
  vp8x.data[0] |= 0x08; // EXIF metadata present
  const payload = Buffer.concat([Buffer.from('WEBP', 'latin1'), ...body.map((c) => riffChunk(c.type, c.data)), riffChunk('EXIF', tiff)]);
  const head = Buffer.alloc(8);
  head.write('RIFF', 0, 'latin1');
  head.writeUInt32LE(payload.length, 4);
  return Buffer.concat([head, payload]);
}

/** The TIFF block of a WebP's EXIF chunk (an `Exif\0\0` prefix, which some writers add, removed), or undefined. */
export function findWebpExif(webp: Uint8Array): Buffer | undefined {
  const chunks = riffChunks(Buffer.from(webp.buffer, webp.byteOffset, webp.byteLength));
  const exif = chunks?.find((c) => c.type === 'EXIF')?.data;
  if (!exif) return undefined;
  return exif.subarray(0, 6).equals(EXIF_HEADER) ? exif.subarray(6) : exif;
}

/**
 * The UserComment bytes of a TIFF (EXIF) block (IFD0 -> Exif IFD -> tag 0x9286), and whether the
 * TIFF is little-endian; undefined when there is none or the block is malformed. Every offset is
 * bounds-checked.
 */
export function findUserComment(tiff: Uint8Array): { bytes: Buffer; littleEndian: boolean } | undefined {
  let buf = Buffer.from(tiff.buffer, tiff.byteOffset, tiff.byteLength);
  if (buf.subarray(0, 6).equals(EXIF_HEADER)) buf = buf.subarray(6);
  if (buf.length < 8) return undefined;
  const order = buf.toString('latin1', 0, 2);
  if (order !== 'II' && order !== 'MM') return undefined;
  const le = order === 'II';
  const u16 = (o: number) => (le ? buf.readUInt16LE(o) : buf.readUInt16BE(o));
  const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  if (u16(2) !== 42) return undefined;
  /** The entry for `tag` in the IFD at `ifd`: its type, count and where its value is. */
  const entry = (ifd: number, tag: number) => {
    if (ifd + 2 > buf.length) return undefined;
    const n = u16(ifd);
    for (let i = 0; i < n; i++) {
      const e = ifd + 2 + i * 12;
      if (e + 12 > buf.length) return undefined;
      if (u16(e) === tag) return { type: u16(e + 2), count: u32(e + 4), at: e + 8 };
    }
    return undefined;
  };
  const ptr = entry(u32(4), TAG_EXIF_IFD);
  if (!ptr) return undefined;
  const uc = entry(u32(ptr.at), TAG_USER_COMMENT);
  if (!uc || (uc.type !== TYPE_UNDEFINED && uc.type !== 2 && uc.type !== 1)) return undefined;
  const start = uc.count <= 4 ? uc.at : u32(uc.at);
  if (start + uc.count > buf.length) return undefined;
  return { bytes: buf.subarray(start, start + uc.count), littleEndian: le };
}

/** UTF-16 without a byte-order mark: the byte order in which the high bytes are mostly zero (text is mostly ASCII), else `fallbackLE`. */
function decodeUtf16(body: Buffer, fallbackLE: boolean): string {
  let b = body.subarray(0, body.length & ~1);
  let le = fallbackLE;
  if (b[0] === 0xfe && b[1] === 0xff) {
    le = false;
    b = b.subarray(2);
  } else if (b[0] === 0xff && b[1] === 0xfe) {
    le = true;
    b = b.subarray(2);
  } else {
    let evenZeros = 0;
    let oddZeros = 0;
    for (let i = 0; i < b.length; i += 2) {
      if (b[i] === 0) evenZeros++;
      if (b[i + 1] === 0) oddZeros++;
    }
    if (evenZeros !== oddZeros) le = oddZeros > evenZeros;
  }
  const copy = Buffer.from(b);
  if (!le) copy.swap16();
  return copy.toString('utf16le');
}

/**
 * Decodes a UserComment: `UNICODE\0` + UTF-16 in either byte order (a BOM decides, else which
 * bytes are mostly zero, else the TIFF's order), `ASCII\0\0\0` (read as UTF-8, as many writers put
 * UTF-8 there), `JIS`, the undefined all-zero prefix, or no prefix at all (UTF-8, as A1111 falls
 * back to). Trailing NULs are dropped.
 */
export function decodeUserComment(bytes: Buffer, littleEndian: boolean): string {
  const prefix = bytes.subarray(0, 8);
  const body = bytes.subarray(8);
  let text: string;
  if (prefix.equals(PREFIX_UNICODE)) text = decodeUtf16(body, littleEndian);
  else if (prefix.equals(PREFIX_ASCII)) text = body.toString('utf8');
  else if (prefix.equals(PREFIX_JIS)) {
    try {
      text = new TextDecoder('shift_jis').decode(body);
    } catch {
      text = body.toString('latin1');
    }
  } else if (bytes.length >= 8 && prefix.every((b) => b === 0)) text = body.toString('utf8');
  else text = bytes.toString('utf8');
  return text.replace(/\0+$/, '');
}
