/** API histograms (edges + counts) -> rows of a bar chart. */
import type { ActivationHistogram, DensityHistogram } from './api'
import { formatActivation } from './highlight'

export interface BinRow {
  /** Bar label on the x axis. */
  label: string
  /** Bin range [lo, hi) in the histogram's own units (log10 density, or activation). */
  lo: number
  hi: number
  count: number
}

function checked(edges: number[] | undefined, counts: number[] | undefined): boolean {
  if (!edges || !counts || counts.length === 0) return false
  if (edges.length !== counts.length + 1) {
    throw new Error(`histogram has ${edges.length} edges for ${counts.length} counts (expected ${counts.length + 1})`)
  }
  return true
}

/** Rows of the density histogram (bins over log10 firing rate); [] when there is none. */
export function densityRows(hist: DensityHistogram | null | undefined): BinRow[] {
  if (!checked(hist?.log10_edges, hist?.counts)) return []
  const edges = hist!.log10_edges
  return hist!.counts.map((count, i) => ({
    label: ((edges[i] + edges[i + 1]) / 2).toFixed(2),
    lo: edges[i],
    hi: edges[i + 1],
    count,
  }))
}

/** The middle of a log-spaced bin (geometric mean; arithmetic when an edge is not positive). */
export function binCenter(lo: number, hi: number): number {
  return lo > 0 && hi > 0 ? Math.sqrt(lo * hi) : (lo + hi) / 2
}

/** Rows of a feature's activation histogram (log-spaced bins); [] when it never fired. */
export function activationRows(hist: ActivationHistogram | null | undefined): BinRow[] {
  if (!checked(hist?.edges, hist?.counts)) return []
  const edges = hist!.edges
  return hist!.counts.map((count, i) => ({
    label: formatActivation(binCenter(edges[i], edges[i + 1])),
    lo: edges[i],
    hi: edges[i + 1],
    count,
  }))
}

/** Firing rate (fraction of tokens) as a percentage with 3 significant digits: ``0.0421%``. */
export function formatDensity(density: number | null | undefined): string {
  if (density === null || density === undefined || Number.isNaN(density)) return '–'
  if (density === 0) return '0% (dead)'
  const pct = density * 100
  return pct >= 1e-4 ? `${pct.toPrecision(3)}%` : `${pct.toExponential(2)}%`
}

/** Tooltip text of a density bin: the firing-rate range it covers. */
export function densityRange(row: BinRow): string {
  return `${formatDensity(10 ** row.lo)} – ${formatDensity(10 ** row.hi)}`
}
