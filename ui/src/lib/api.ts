/** Typed client of the feature API (server/routers/*.py). */

/** The backend's base URL. Dev server (``npm run dev``): VITE_BACKEND_URL from ui/.env, default
 * http://localhost:24577. Built UI: always the server that serves it (same origin, ``/api``). */
export const BACKEND_URL: string = import.meta.env.DEV
  ? ((import.meta.env.VITE_BACKEND_URL as string | undefined) || 'http://localhost:24577').replace(/\/+$/, '')
  : ''

/** Where the backend is, for messages ("the backend at ... is unreachable"). */
export function backendLabel(): string {
  return BACKEND_URL || (typeof window === 'undefined' ? '' : window.location.origin)
}

export interface DictionarySummary {
  id: string
  model: string | null
  site: string | null
  variant: string | null
  d_sae: number | null
  l0: number | null
  explained_variance: number | null
  analyzed: boolean
}

/** Histogram of log10 firing rates: counts[i] features in [log10_edges[i], log10_edges[i+1]). */
export interface DensityHistogram {
  log10_edges: number[]
  counts: number[]
}

export interface Dictionary extends DictionarySummary {
  alive: number | null
  dead: number | null
  dead_fraction: number | null
  n_features: number | null
  tokens: number | null
  contexts: number | null
  density_histogram: DensityHistogram | null
  metrics: Record<string, unknown>
  provenance: Record<string, unknown>
  analysis_id: string | null
  analyzed_at: string | null
}

export interface FeatureRow {
  index: number
  density: number
  max_activation: number
  mean_activation?: number
  count?: number
}

export interface FeaturePage {
  total: number
  skip: number
  limit: number
  features: FeatureRow[]
}

export type SortKey = 'density' | 'max_activation' | 'index'

export interface FeatureQuery {
  sort: SortKey
  descending: boolean
  skip: number
  limit: number
  density_min?: number
  density_max?: number
  max_activation_min?: number
  max_activation_max?: number
}

/** One example: a window of tokens around the firing token ``center`` with each token's activation. */
export interface Example {
  value: number
  tokens: string[]
  acts: number[]
  center: number
}

export interface Band {
  lo: number
  hi: number
  count: number
  fraction: number
  examples: Example[]
}

/** Log-spaced histogram of a feature's non-zero activations: counts[i] in [edges[i], edges[i+1]). */
export interface ActivationHistogram {
  edges: number[]
  counts: number[]
}

export interface LogitEffect {
  token: string
  value: number | null
}

export interface Feature {
  index: number
  count: number
  density: number
  max_activation: number
  mean_activation: number
  min_activation: number
  dictionary_id: string
  d_sae: number | null
  histogram: ActivationHistogram | null
  top: Example[]
  bands: Band[]
  random: Example[]
  logits: { top: LogitEffect[]; bottom: LogitEffect[] } | null
  neighbours: { index: number; cosine: number | null }[] | null
  explanation: string | null
}

export interface SearchResult {
  query: string
  features: (FeatureRow & { matched: 'logits' | 'context' })[]
}

export interface LiveActivations {
  index: number
  tokens: string[]
  values: number[]
}

/** A failed request: the backend did not answer ('unreachable') or answered with an error status. */
export class ApiError extends Error {
  readonly kind: 'unreachable' | 'http'
  readonly status: number

  constructor(kind: 'unreachable' | 'http', status: number, message: string) {
    super(message)
    this.kind = kind
    this.status = status
  }
}

/** ``fetch`` the API path (``/dictionaries``...) and parse its JSON; errors become ApiError. */
export async function apiFetch<T>(path: string, init: RequestInit = {}): Promise<T> {
  let res: Response
  try {
    res = await fetch(`${BACKEND_URL}/api${path}`, init)
  } catch (e) {
    if (e instanceof DOMException && e.name === 'AbortError') throw e
    throw new ApiError('unreachable', 0, `The backend at ${backendLabel()} is unreachable.`)
  }
  if (!res.ok) {
    let detail = res.statusText
    try {
      const body = await res.json()
      if (typeof body?.detail === 'string') detail = body.detail
      else if (body?.detail) detail = JSON.stringify(body.detail)
    } catch {
      /* not JSON: keep the status text */
    }
    // A proxy in front of a stopped backend answers 502/503/504: say so plainly.
    if (res.status >= 502 && res.status <= 504) {
      throw new ApiError('unreachable', res.status, `The backend at ${backendLabel()} is unreachable (${res.status}).`)
    }
    throw new ApiError('http', res.status, detail || `HTTP ${res.status}`)
  }
  try {
    return (await res.json()) as T
  } catch {
    throw new ApiError('http', res.status, `The backend at ${backendLabel()} answered something that is not JSON.`)
  }
}

const enc = encodeURIComponent

/** The query string of a feature list request (only set filters are sent). */
export function featureQueryString(q: FeatureQuery): string {
  const params = new URLSearchParams({
    sort: q.sort,
    descending: String(q.descending),
    skip: String(q.skip),
    limit: String(q.limit),
  })
  for (const key of ['density_min', 'density_max', 'max_activation_min', 'max_activation_max'] as const) {
    const v = q[key]
    if (v !== undefined && Number.isFinite(v)) params.set(key, String(v))
  }
  return params.toString()
}

export const api = {
  dictionaries: () => `/dictionaries`,
  dictionary: (id: string) => `/dictionaries/${enc(id)}`,
  features: (id: string, q: FeatureQuery) => `/dictionaries/${enc(id)}/features?${featureQueryString(q)}`,
  feature: (id: string, index: number) => `/dictionaries/${enc(id)}/features/${index}`,
  random: (id: string) => `/dictionaries/${enc(id)}/features/random`,
  search: (id: string, q: string) => `/dictionaries/${enc(id)}/search?q=${enc(q)}&limit=50`,
  activations: (id: string, index: number) => `/dictionaries/${enc(id)}/features/${index}/activations`,
  explanation: (id: string, index: number) => `/dictionaries/${enc(id)}/features/${index}/explanation`,
}

export function postJson<T>(path: string, body: unknown, headers: Record<string, string> = {}, method = 'POST'): Promise<T> {
  return apiFetch<T>(path, { method, headers: { 'Content-Type': 'application/json', ...headers }, body: JSON.stringify(body) })
}
