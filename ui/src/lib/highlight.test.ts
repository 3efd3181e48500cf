import { describe, expect, it } from 'vitest'
import { activationColor, formatActivation, relativeActivation, tokenCells, tokenTitle, visibleToken } from './highlight'

const alphaOf = (css: string) => Number(/rgba\(234, 88, 12, ([\d.]+)\)/.exec(css)?.[1])

describe('activation -> color', () => {
  it('leaves tokens that do not fire uncolored', () => {
    expect(activationColor(0, 10)).toBe('transparent')
    expect(activationColor(-3, 10)).toBe('transparent')
    expect(activationColor(Number.NaN, 10)).toBe('transparent')
    expect(activationColor(5, 0)).toBe('transparent') // a dead feature has max 0
  })

  it('is strongest at the feature max and clamps above it', () => {
    expect(activationColor(10, 10)).toBe('rgba(234, 88, 12, 0.85)')
    expect(activationColor(25, 10)).toBe('rgba(234, 88, 12, 0.85)')
  })

  it('grows with the activation relative to the max', () => {
    expect(activationColor(5, 10)).toBe('rgba(234, 88, 12, 0.465)') // 0.08 + 0.77 * 0.5
    const alphas = [0.01, 1, 2.5, 5, 9.99].map((v) => alphaOf(activationColor(v, 10)))
    expect(alphas.every((a, i) => i === 0 || a > alphas[i - 1])).toBe(true)
    expect(alphas[0]).toBeGreaterThan(0) // any firing is visible
  })

  it('maps to the same color for the same ratio whatever the scale', () => {
    expect(activationColor(3, 12)).toBe(activationColor(0.25, 1))
    expect(relativeActivation(3, 12)).toBe(0.25)
  })
})

describe('token text', () => {
  it('shows whitespace and control characters visibly', () => {
    expect(visibleToken('\n')).toBe('↵')
    expect(visibleToken('\n    ')).toBe('↵    ')
    expect(visibleToken('a\r\nb')).toBe('a↵b')
    expect(visibleToken('\t')).toBe('⇥')
    expect(visibleToken('\u0000x\u001b')).toBe('\\u0000x\\u001b')
    expect(visibleToken('')).toBe('∅')
    expect(visibleToken(' Paris')).toBe(' Paris')
    expect(visibleToken('<b>&amp;')).toBe('<b>&amp;') // escaping is the renderer's job, not a rewrite
  })

  it('puts the exact string and value in the title', () => {
    expect(tokenTitle(' the\n', 1.23456)).toBe('" the\\n"  activation 1.23')
    expect(tokenTitle('"', 0)).toBe('"\\""  activation 0')
  })

  it('formats activations with 3 significant digits', () => {
    expect(formatActivation(0)).toBe('0')
    expect(formatActivation(12)).toBe('12.0')
    expect(formatActivation(144.79)).toBe('145')
    expect(formatActivation(0.012345)).toBe('0.0123')
    expect(formatActivation(2345.6)).toBe('2346')
    expect(formatActivation(0.0000123)).toBe('1.23e-5')
    expect(formatActivation(null)).toBe('–')
  })
})

describe('tokenCells', () => {
  it('pairs every token with its activation, marks the center, treats missing values as 0', () => {
    const cells = tokenCells(['a', '\n', 'c'], [0, 4], 8, 1)
    expect(cells.map((c) => c.text)).toEqual(['a', '↵', 'c'])
    expect(cells.map((c) => c.value)).toEqual([0, 4, 0])
    expect(cells.map((c) => c.isCenter)).toEqual([false, true, false])
    expect(cells.map((c) => c.background)).toEqual(['transparent', 'rgba(234, 88, 12, 0.465)', 'transparent'])
    expect(cells[1].title).toBe('"\\n"  activation 4.00')
  })
})
