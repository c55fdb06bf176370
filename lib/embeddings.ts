/**
 * Textual-inversion embeddings: the `embeddings` option of generate() and encodePrompt(), beside
 * loadModel's `embeddingsDir`. The engine reads the files (adapters/embeddings.h).
 * @module
 */
import path from 'node:path';
import { expectKnownKeys, expectNonEmptyString, invalid, isObject } from './validate.ts';

/**
 * A textual-inversion embedding for one call: its vectors stand in for `trigger` wherever the
 * prompt holds it (case-insensitive, emphasis applies as to any word).
 * @example `{ path: 'embeddings/EasyNegative.safetensors' }` (trigger `easynegative`)
 */
export interface EmbeddingOption {
  /**
   * The file: safetensors `emb_params` [vectors, width] (or SDXL's `clip_l` + `clip_g`), an
   * A1111 `.pt` / `.bin` (`string_to_param`), a `.ckpt` or `.gguf` holding one such tensor.
   * Relative paths are taken from the working directory.
   * @example `'models/embeddings/EasyNegative.safetensors'`
   */
  path: string;
  /**
   * The word that stands for the embedding in prompts; replaces a file of `embeddingsDir` with
   * the same trigger.
   * @default the file name without its extension
   * @example `{ path: 'emb/v2.pt', trigger: 'mystyle' }`
   */
  trigger?: string;
}

/** What the native side receives: absolute paths, triggers as given. */
export interface NativeEmbedding { path: string; trigger?: string }

/** Checks an `embeddings` option: an array of { path, trigger? }; paths are made absolute. */
export function checkEmbeddings(name: string, v: unknown): NativeEmbedding[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) invalid(name, 'an array of { path, trigger? } objects', v);
  return v.map((e: unknown, i) => {
    const at = `${name}[${i}]`;
    if (!isObject(e)) invalid(at, 'an object { path, trigger? }', e);
    expectKnownKeys(at, e, ['path', 'trigger']);
    const out: NativeEmbedding = { path: path.resolve(expectNonEmptyString(`${at}.path`, e.path)) };
    if (e.trigger !== undefined) {
      const t = expectNonEmptyString(`${at}.trigger`, e.trigger);
      if (t.trim() !== t) invalid(`${at}.trigger`, 'a word without leading or trailing spaces', t);
      out.trigger = t;
    }
    return out;
  });
}
