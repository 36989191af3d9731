/**
 * Answers about a package version, remembered per object that never changes once asked about
 * (a parsed advisory, a store's list of them: kv-scan.ts CachedScan shares both), for as long as
 * that object lives. Internal to the catalog package (index.ts does not export it).
 */

/** `compute`'s answer about package `name` at `version` for `owner`, remembered in `memo`. */
export function answerFor<O extends object, V>(memo: WeakMap<O, Map<string, V>>, owner: O, name: string, version: string, compute: () => V): V {
  let answers = memo.get(owner);
  if (!answers) memo.set(owner, (answers = new Map()));
  // Length-prefixed: no name and version pair reads as another.
  const asked = `${name.length}:${name}@${version}`;
  let answer = answers.get(asked);
  if (answer === undefined) answers.set(asked, (answer = compute()));
  return answer;
}
