import { renderToStaticMarkup } from 'react-dom/server'
import { describe, expect, it } from 'vitest'
import { TokenText } from './TokenText'

describe('TokenText', () => {
  it('escapes token text and attributes (tokens are data, never markup)', () => {
    const html = renderToStaticMarkup(
      <TokenText tokens={['<script>alert(1)</script>', ' &amp;', '"><img src=x onerror=alert(1)>']} acts={[1, 0, 2]} max={2} />,
    )
    expect(html).not.toContain('<script>')
    expect(html).not.toContain('<img')
    expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;')
    expect(html).toContain(' &amp;amp;') // the literal text "&amp;", escaped once
    expect(html).toContain('data-token="&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"')
    expect((html.match(/class="tok( tok-center)?"/g) ?? []).length).toBe(3)
  })

  it('colors each token by its activation relative to the max and carries the value', () => {
    const html = renderToStaticMarkup(<TokenText tokens={['x', 'y', 'z']} acts={[0, 1, 4]} max={4} center={2} />)
    const spans = [...html.matchAll(/<span class="(tok[^"]*)" style="background:([^"]*)" title="([^"]*)" data-act="([^"]*)"/g)]
    expect(spans.map((m) => m[1])).toEqual(['tok', 'tok', 'tok tok-center'])
    expect(spans.map((m) => m[2])).toEqual(['transparent', 'rgba(234, 88, 12, 0.273)', 'rgba(234, 88, 12, 0.85)']) // 0.08 + 0.77/4
    expect(spans.map((m) => m[4])).toEqual(['0', '1', '4'])
    expect(spans[1][3]).toBe('&quot;y&quot;  activation 1.00')
  })
})
