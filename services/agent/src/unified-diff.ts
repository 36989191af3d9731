/**
 * Unified diffs (as `diff -u` and `git diff` print them, three lines of context) of a proposal's
 * files against the catalog, for the reviewer: computed here, with Myers' O(ND) algorithm,
 * because the service image carries no diff tool. Two texts that differ in more than
 * MAX_EDITS lines are shown as the whole old text removed and the new one added, so that a
 * rewritten file costs no more than its size.
 */

const CONTEXT = 3;
const MAX_EDITS = 2000;

type Op = { kind: " " | "-" | "+"; line: string };

/** Lines of a text; `noEol` when its last line has no newline. */
function linesOf(text: string): { lines: string[]; noEol: boolean } {
  if (text === "") return { lines: [], noEol: false };
  const lines = text.split("\n");
  const noEol = lines.at(-1) !== "";
  if (!noEol) lines.pop();
  return { lines, noEol };
}

/* eslint-disable @typescript-eslint/no-non-null-assertion -- Myers' inner loops: every index into
   v and trace[d] is a diagonal k in [-d, d] shifted into range, and every a[x] / b[y] read is
   below the lengths checked just before; under noUncheckedIndexedAccess they read as possibly
   undefined, and a fallback in these loops would hide a bug instead of revealing it. */

/** The shortest edit script from `a` to `b` (Myers), or undefined past MAX_EDITS edits. */
function editScript(a: string[], b: string[]): Op[] | undefined {
  const n = a.length;
  const m = b.length;
  const max = Math.min(n + m, MAX_EDITS);
  const offset = max + 1;
  const v = new Int32Array(2 * max + 3);
  // trace[d]: v over k in [-d, d] before step d, to walk back from the end.
  const trace: Int32Array[] = [];
  for (let d = 0; d <= max; d++) {
    trace.push(v.slice(offset - d, offset + d + 1));
    for (let k = -d; k <= d; k += 2) {
      let x = k === -d || (k !== d && v[offset + k - 1]! < v[offset + k + 1]!) ? v[offset + k + 1]! : v[offset + k - 1]! + 1;
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) {
        x++;
        y++;
      }
      v[offset + k] = x;
      if (x >= n && y >= m) return backtrack(a, b, trace, d);
    }
  }
  return undefined;
}

function backtrack(a: string[], b: string[], trace: Int32Array[], last: number): Op[] {
  const ops: Op[] = [];
  let x = a.length;
  let y = b.length;
  for (let d = last; d > 0; d--) {
    const before = trace[d]!;
    const at = (k: number) => before[k + d]!;
    const k = x - y;
    const prevK = k === -d || (k !== d && at(k - 1) < at(k + 1)) ? k + 1 : k - 1;
    const prevX = at(prevK);
    const prevY = prevX - prevK;
    while (x > prevX && y > prevY) {
      ops.push({ kind: " ", line: a[--x]! });
      y--;
    }
    if (x === prevX) ops.push({ kind: "+", line: b[--y]! });
    else ops.push({ kind: "-", line: a[--x]! });
  }
  while (x > 0 && y > 0) {
    ops.push({ kind: " ", line: a[--x]! });
    y--;
  }
  return ops.reverse();
}
/* eslint-enable @typescript-eslint/no-non-null-assertion */

/**
 * The unified diff of one file from `before` (undefined: a new file) to `after`, headed
 * `--- a/<path>` / `+++ b/<path>`; empty when they are equal.
 */
export function unifiedDiff(file: string, before: string | undefined, after: string): string {
  if (before === after) return "";
  const a = linesOf(before ?? "");
  const b = linesOf(after);
  // A last line that gains or loses its newline differs from itself: mark it so.
  if (a.noEol) a.lines[a.lines.length - 1] += "\n\\ No newline at end of file";
  if (b.noEol) b.lines[b.lines.length - 1] += "\n\\ No newline at end of file";
  const ops = editScript(a.lines, b.lines) ?? [...a.lines.map((line): Op => ({ kind: "-", line })), ...b.lines.map((line): Op => ({ kind: "+", line }))];
  const out = [`--- ${before === undefined ? "/dev/null" : `a/${file}`}`, `+++ b/${file}`];
  // Hunks: runs of changes, with CONTEXT lines around each, merged when their contexts touch.
  const hunks: { first: number; last: number }[] = [];
  for (const [i, op] of ops.entries()) {
    if (op.kind === " ") continue;
    const open = hunks.at(-1);
    if (open && i - open.last <= 2 * CONTEXT) open.last = i;
    else hunks.push({ first: i, last: i });
  }
  for (const { first, last } of hunks) {
    const from = Math.max(0, first - CONTEXT);
    const to = Math.min(ops.length, last + CONTEXT + 1);
    let aStart = 0;
    let bStart = 0;
    for (const op of ops.slice(0, from)) {
      if (op.kind !== "+") aStart++;
      if (op.kind !== "-") bStart++;
    }
    const hunk = ops.slice(from, to);
    const aLen = hunk.filter((op) => op.kind !== "+").length;
    const bLen = hunk.filter((op) => op.kind !== "-").length;
    out.push(`@@ -${aLen === 0 ? aStart : aStart + 1},${aLen} +${bLen === 0 ? bStart : bStart + 1},${bLen} @@`);
    for (const op of hunk) out.push(`${op.kind}${op.line}`);
  }
  return `${out.join("\n")}\n`;
}
