/** Number formatting of tables and stat cards ('–' for missing values). */
export const fmt = {
  int: (v: number | null | undefined) => (v === null || v === undefined ? '–' : Math.round(v).toLocaleString('en-US')),
  num: (v: number | null | undefined, digits = 3) =>
    v === null || v === undefined || Number.isNaN(v) ? '–' : String(Number(v.toPrecision(digits))),
  pct: (v: number | null | undefined) => (v === null || v === undefined ? '–' : `${(v * 100).toFixed(1)}%`),
}

/** A number typed in a filter box: undefined when empty or not a number. */
export function parseNumber(text: string | null | undefined): number | undefined {
  if (text === null || text === undefined || text.trim() === '') return undefined
  const v = Number(text)
  return Number.isFinite(v) ? v : undefined
}
