import { describe, expect, it } from 'vitest'
import { featureQueryString } from './api'
import { href, parseHash } from './router'

describe('hash routes', () => {
  it('parses every page and round-trips ids that need escaping', () => {
    expect(parseHash('')).toEqual({ page: 'dictionaries' })
    expect(parseHash('#/')).toEqual({ page: 'dictionaries' })
    expect(parseHash(href.feature('run/a b', 12))).toEqual({ page: 'feature', id: 'run/a b', index: 12 })
    const r = parseHash(href.dictionary('d1', new URLSearchParams({ sort: 'density', page: '2' })))
    expect(r.page === 'dictionary' && [r.id, r.params.get('sort'), r.params.get('page')]).toEqual(['d1', 'density', '2'])
    expect(parseHash('#/d/x/f/abc').page).toBe('unknown')
  })
})

describe('feature list query', () => {
  it('sends only the filters that are set', () => {
    expect(featureQueryString({ sort: 'density', descending: false, skip: 50, limit: 50, density_min: 0.001 })).toBe(
      'sort=density&descending=false&skip=50&limit=50&density_min=0.001',
    )
  })
})
