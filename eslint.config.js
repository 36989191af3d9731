// Lint: the mistakes the type-checker lets through. Type-aware (the project's tsconfig), run by
// `pnpm test` after the type-check. Style is not checked here.
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["**/node_modules/**", "**/generated/**", ".tools/**", ".homeostat/**"] },
  {
    files: ["**/*.ts"],
    languageOptions: { parser: tseslint.parser, parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    plugins: { "@typescript-eslint": tseslint.plugin },
    linterOptions: { reportUnusedDisableDirectives: "error" },
    rules: {
      // A promise nobody awaits loses its error: await it, return it, or say `void` on purpose.
      // node:test's test()/describe() are awaited by the runner.
      "@typescript-eslint/no-floating-promises": [
        "error",
        {
          allowForKnownSafeCalls: [
            { from: "package", package: "node:test", name: ["test", "describe", "it", "suite", "before", "after", "beforeEach", "afterEach"] },
          ],
        },
      ],
      "@typescript-eslint/no-misused-promises": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_", caughtErrors: "none" }],
      // `x!` states an invariant nothing checks: say it (a destructured match, a checked lookup
      // that throws a clear error, a fallback where one is right) instead. The one exception is
      // hot index arithmetic (packages/catalog/src/graph.ts), under an explained eslint-disable.
      "@typescript-eslint/no-non-null-assertion": "error",
    },
  },
  {
    // In a test, `x!` is an assertion: when the guess is wrong the test fails loudly, as it should.
    files: ["**/*.test.ts", "test/**"],
    rules: { "@typescript-eslint/no-non-null-assertion": "off" },
  },
);
