// Types of agent-lines.mjs (plain JavaScript, so the fake agent runs without a loader).
export declare const LINE_MARKER: string
export declare const TIME_MARKER: string
export declare function agentLine (sessionId: string, index: number, timeNs: bigint | number, bytes: number): string
