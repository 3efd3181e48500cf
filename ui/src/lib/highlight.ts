/** How a token's activation is shown: a background whose opacity grows with the activation
 * relative to the feature's maximum, and the exact value in the token's title. */

/** The highlight hue (RGB); one color for every activation view so they read the same. */
export const HIGHLIGHT_RGB = [234, 88, 12] as const
/** Opacity at the feature's maximum activation (text stays readable on it). */
export const MAX_ALPHA = 0.85

/** Activation relative to ``max`` clamped to [0, 1]; 0 for non-positive, NaN or a non-positive max. */
export function relativeActivation(value: number, max: number): number {
  if (!(value > 0) || !(max > 0)) return 0
  return Math.min(1, value / max)
}

/** CSS background of a token with activation ``value`` on a feature whose maximum is ``max``
 * (``transparent`` when the token does not fire). */
export function activationColor(value: number, max: number): string {
  const r = relativeActivation(value, max)
  if (r === 0) return 'transparent'
  const alpha = Math.round((0.08 + (MAX_ALPHA - 0.08) * r) * 1000) / 1000
  return `rgba(${HIGHLIGHT_RGB[0]}, ${HIGHLIGHT_RGB[1]}, ${HIGHLIGHT_RGB[2]}, ${alpha})`
}

/** An activation with 3 significant digits, trailing zeros kept so columns align (``0`` for exact
 * zeros, whole numbers from 1000, an exponent below 0.001). */
export function formatActivation(value: number | null | undefined): string {
  if (value === null || value === undefined || Number.isNaN(value)) return '–'
  if (value === 0) return '0'
  const abs = Math.abs(value)
  if (abs >= 1000) return value.toFixed(0)
  if (abs >= 0.001) return value.toPrecision(3)
  return value.toExponential(2)
}

/** The visible text of a token: newlines as ``↵``, tabs as ``⇥``, other control characters as
 * ``\uXXXX``, the empty token as ``∅``. Spaces are kept (shown with ``white-space: pre``). */
export function visibleToken(token: string): string {
  if (token === '') return '∅'
  return token.replace(/\r\n|[\n\r\t]|[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/g, (c) => {
    if (c === '\r\n' || c === '\n' || c === '\r') return '↵'
    if (c === '\t') return '⇥'
    return `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`
  })
}

/** The hover text of a token: its exact string (JSON-quoted, so spaces show) and activation. */
export function tokenTitle(token: string, value: number): string {
  return `${JSON.stringify(token)}  activation ${formatActivation(value)}`
}

export interface TokenCell {
  text: string
  title: string
  background: string
  value: number
  isCenter: boolean
}

/** One cell per token: what to draw for ``tokens[i]`` with activation ``acts[i]`` (missing -> 0). */
export function tokenCells(tokens: string[], acts: number[], max: number, center = -1): TokenCell[] {
  return tokens.map((token, i) => {
    const value = acts[i] ?? 0
    return {
      text: visibleToken(token),
      title: tokenTitle(token, value),
      background: activationColor(value, max),
      value,
      isCenter: i === center,
    }
  })
}
