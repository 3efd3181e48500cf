import { useEffect, useState } from 'react'

/** Hash routes: ``#/``, ``#/d/<id>?<table state>``, ``#/d/<id>/f/<index>``. Hash routing needs no
 * server-side fallback, so deep links work from FastAPI's static mount and the dev server alike. */
export type Route =
  | { page: 'dictionaries' }
  | { page: 'dictionary'; id: string; params: URLSearchParams }
  | { page: 'feature'; id: string; index: number }
  | { page: 'unknown'; hash: string }

export function parseHash(hash: string): Route {
  const raw = hash.replace(/^#/, '') || '/'
  const [path, query = ''] = raw.split('?', 2)
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent)
  if (parts.length === 0) return { page: 'dictionaries' }
  if (parts[0] === 'd' && parts.length === 2) return { page: 'dictionary', id: parts[1], params: new URLSearchParams(query) }
  if (parts[0] === 'd' && parts.length === 4 && parts[2] === 'f' && /^\d+$/.test(parts[3])) {
    return { page: 'feature', id: parts[1], index: Number(parts[3]) }
  }
  return { page: 'unknown', hash: raw }
}

export const href = {
  dictionaries: () => '#/',
  dictionary: (id: string, params?: URLSearchParams) => {
    const q = params?.toString()
    return `#/d/${encodeURIComponent(id)}${q ? `?${q}` : ''}`
  },
  feature: (id: string, index: number) => `#/d/${encodeURIComponent(id)}/f/${index}`,
}

export function navigate(to: string, replace = false): void {
  if (replace) window.history.replaceState(null, '', to)
  else window.location.hash = to.replace(/^#/, '')
  if (replace) window.dispatchEvent(new HashChangeEvent('hashchange'))
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseHash(window.location.hash))
  useEffect(() => {
    const onChange = () => setRoute(parseHash(window.location.hash))
    window.addEventListener('hashchange', onChange)
    return () => window.removeEventListener('hashchange', onChange)
  }, [])
  return route
}
