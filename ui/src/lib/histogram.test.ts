import { describe, expect, it } from 'vitest'
import { activationRows, binCenter, densityRange, densityRows, formatDensity } from './histogram'

describe('densityRows', () => {
  it('turns n+1 log10 edges and n counts into n bars', () => {
    const rows = densityRows({ log10_edges: [-4, -3, -2, -1], counts: [5, 0, 7] })
    expect(rows).toEqual([
      { label: '-3.50', lo: -4, hi: -3, count: 5 },
      { label: '-2.50', lo: -3, hi: -2, count: 0 },
      { label: '-1.50', lo: -2, hi: -1, count: 7 },
    ])
    expect(densityRange(rows[0])).toBe('0.0100% – 0.100%')
  })

  it('has no rows when there is no histogram and refuses mismatched arrays', () => {
    expect(densityRows(null)).toEqual([])
    expect(densityRows(undefined)).toEqual([])
    expect(densityRows({ log10_edges: [0], counts: [] })).toEqual([])
    expect(() => densityRows({ log10_edges: [-2, -1], counts: [1, 2] })).toThrow(/2 edges for 2 counts/)
  })
})

describe('activationRows', () => {
  it('labels log-spaced bins by their geometric center', () => {
    const rows = activationRows({ edges: [1, 4, 16], counts: [3, 1] })
    expect(rows.map((r) => [r.label, r.lo, r.hi, r.count])).toEqual([
      ['2.00', 1, 4, 3],
      ['8.00', 4, 16, 1],
    ])
    expect(binCenter(0, 2)).toBe(1) // a non-positive edge: arithmetic mean
  })

  it('has no rows for a feature that never fired', () => {
    expect(activationRows(null)).toEqual([])
  })
})

describe('formatDensity', () => {
  it('shows firing rates as percentages', () => {
    expect(formatDensity(0.5224)).toBe('52.2%')
    expect(formatDensity(0.00179)).toBe('0.179%')
    expect(formatDensity(3.09e-4)).toBe('0.0309%')
    expect(formatDensity(2e-7)).toBe('2.00e-5%')
    expect(formatDensity(0)).toBe('0% (dead)')
  })
})
