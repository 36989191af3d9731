/** The command line's exit codes (main.ts's help lists them): notReady is `homeostat status`'s, a required service without a ready instance. */
export const exitCodes = { ok: 0, failed: 1, unreachable: 2, unavailable: 3, notReady: 4, usage: 64, denied: 77 } as const;
