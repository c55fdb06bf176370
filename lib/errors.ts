/**
 * Every error sdnode throws or rejects with is an {@link SdError}. Subclasses say what kind of
 * failure it was, `code` says the same as a string (stable across versions), and errors about
 * a file carry its path in `file`.
 *
 * @example
 * ```ts
 * try {
 *   await inspectModel('model.safetensors');
 * } catch (e) {
 *   if (e instanceof ModelFormatError) console.error(`corrupt model ${e.file}: ${e.message}`);
 *   else throw e;
 * }
 * ```
 * @module
 */

/** Machine-readable kind of failure; also the `code` of the native error it came from. */
export type SdErrorCode =
  | 'InvalidArgument'
  | 'ModelFormat'
  | 'ImageFormat'
  | 'UnsupportedModel'
  | 'Aborted'
  | 'Io'
  | 'OutOfMemory'
  | 'Disposed'
  | 'NativeLoad'
  | 'Internal';

/** Base class of every sdnode error. */
export class SdError extends Error {
  readonly code: SdErrorCode;
  /** The file the error is about, when there is one. */
  readonly file?: string;

  constructor(code: SdErrorCode, message: string, options?: { file?: string; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    if (options?.file !== undefined) this.file = options.file;
  }

  override get name(): string {
    return this.constructor.name;
  }
}

/** An argument or option has a wrong type or value. The message names it, the value and what is allowed. */
export class InvalidArgumentError extends SdError {
  constructor(message: string, options?: { file?: string; cause?: unknown }) {
    super('InvalidArgument', message, options);
  }
}

/** A model file is corrupt, truncated, or inconsistent with what its header says. */
export class ModelFormatError extends SdError {
  constructor(message: string, options?: { file?: string; cause?: unknown }) {
    super('ModelFormat', message, options);
  }
}

/** An image (e.g. a PNG given to `decodePNG`) is corrupt, truncated, too large, or of a kind sdnode does not read. */
export class ImageFormatError extends SdError {
  constructor(message: string, options?: { file?: string; cause?: unknown }) {
    super('ImageFormat', message, options);
  }
}

/** A well-formed file holds something sdnode does not run (another architecture, an unknown tensor type). */
export class UnsupportedModelError extends SdError {
  constructor(message: string, options?: { file?: string; cause?: unknown }) {
    super('UnsupportedModel', message, options);
  }
}

/** The operation was cancelled through its `AbortSignal`. `cause` holds the signal's reason. */
export class AbortError extends SdError {
  constructor(message = 'the operation was aborted', options?: { cause?: unknown }) {
    super('Aborted', message, options);
  }
}

/** The operating system refused: missing file, no permission, memory map failed. */
export class IoError extends SdError {
  constructor(message: string, options?: { file?: string; cause?: unknown }) {
    super('Io', message, options);
  }
}

/** An allocation failed (host or device memory). */
export class OutOfMemoryError extends SdError {
  constructor(message: string, options?: { file?: string; cause?: unknown }) {
    super('OutOfMemory', message, options);
  }
}

/** The object was used after `dispose()`. */
export class DisposedError extends SdError {
  constructor(message: string) {
    super('Disposed', message);
  }
}

/** The native addon could not be loaded (no prebuild for this platform and no source build). */
export class NativeLoadError extends SdError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('NativeLoad', message, options);
  }
}

/** A bug in sdnode: an internal invariant did not hold. Please report it. */
export class InternalError extends SdError {
  constructor(message: string, options?: { file?: string; cause?: unknown }) {
    super('Internal', message, options);
  }
}

const byCode: Record<string, new (message: string, options?: { file?: string; cause?: unknown }) => SdError> = {
  InvalidArgument: InvalidArgumentError,
  ModelFormat: ModelFormatError,
  UnsupportedModel: UnsupportedModelError,
  Aborted: AbortError,
  Io: IoError,
  OutOfMemory: OutOfMemoryError,
  Internal: InternalError,
  Disposed: DisposedError as unknown as new (message: string) => SdError,
};

/**
 * Turns an error thrown by the native addon (a plain Error with `code` and maybe `file`) into
 * the matching typed error. The new error is created here, in the caller's async context, so its
 * stack shows the caller's frames; the native error stays reachable as `cause`.
 */
export function fromNative(err: unknown): SdError {
  if (err instanceof SdError) return err;
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    const file = (err as { file?: unknown }).file;
    const Ctor = typeof code === 'string' ? byCode[code] : undefined;
    if (Ctor) return new Ctor(err.message, { file: typeof file === 'string' ? file : undefined, cause: err });
    return new InternalError(`unexpected native error: ${err.message}`, { cause: err });
  }
  return new InternalError(`unexpected native error: ${String(err)}`, { cause: err });
}
