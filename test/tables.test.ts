// lib/engine-tables.ts is generated from the engine's option tables: it must be current, so
// TypeScript and C++ check the same limits and names.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { native } from '../lib/binding.ts';
// @ts-expect-error: a plain .mjs build script without types
import { renderTables, tablesFile } from '../scripts/gen-tables.mjs';

test('lib/engine-tables.ts equals what the engine reports (npm run gen:tables regenerates it)', () => {
  assert.equal(fs.readFileSync(tablesFile, 'utf8'), renderTables(native().optionTables()));
});
