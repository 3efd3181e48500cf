import { useEffect, useState } from 'react'
import { api, apiFetch, type Dictionary, type Feature, type FeaturePage, type FeatureQuery, type SearchResult, type SortKey } from '../lib/api'
import { useApi } from '../lib/useApi'
import { href, navigate } from '../lib/router'
import { densityRange, densityRows, formatDensity } from '../lib/histogram'
import { formatActivation } from '../lib/highlight'
import { fmt, parseNumber } from '../lib/format'
import { Histogram } from '../components/Histogram'
import { Empty, ErrorMessage, Loading } from '../components/Status'

const PAGE_SIZE = 50
const SORTS: SortKey[] = ['max_activation', 'density', 'index']
const FILTERS = [
  ['dmin', 'density_min', 'Density ≥', 'e.g. 1e-3'],
  ['dmax', 'density_max', 'Density ≤', 'e.g. 0.1'],
  ['amin', 'max_activation_min', 'Max act ≥', 'e.g. 1'],
  ['amax', 'max_activation_max', 'Max act ≤', ''],
] as const

/** The table state lives in the URL (``#/d/<id>?sort=density&page=2``): back/forward and links keep it. */
export function queryOf(params: URLSearchParams): FeatureQuery {
  const sort = (SORTS as string[]).includes(params.get('sort') ?? '') ? (params.get('sort') as SortKey) : 'max_activation'
  const page = Math.max(0, Math.floor(parseNumber(params.get('page')) ?? 0))
  const q: FeatureQuery = { sort, descending: params.get('desc') !== '0', skip: page * PAGE_SIZE, limit: PAGE_SIZE }
  for (const [short, key] of FILTERS) {
    const v = parseNumber(params.get(short))
    if (v !== undefined) q[key] = v
  }
  return q
}

function withParams(params: URLSearchParams, changes: Record<string, string | null>): URLSearchParams {
  const next = new URLSearchParams(params)
  for (const [k, v] of Object.entries(changes)) {
    if (v === null || v === '') next.delete(k)
    else next.set(k, v)
  }
  return next
}

export function DictionaryPage({ id, params }: { id: string; params: URLSearchParams }) {
  const dict = useApi<Dictionary>(api.dictionary(id))
  const go = (changes: Record<string, string | null>) => navigate(href.dictionary(id, withParams(params, changes)))

  if (dict.error) {
    return (
      <main className="page">
        <h1>Dictionary {id}</h1>
        <ErrorMessage error={dict.error} onRetry={dict.reload} notFound={`There is no dictionary “${id}”.`} />
      </main>
    )
  }
  const d = dict.data
  return (
    <main className="page">
      <nav className="crumbs">
        <a href={href.dictionaries()}>Dictionaries</a> / <span>{id}</span>
      </nav>
      <h1>
        {id}
        {d && <span className="subtitle">{[d.model, d.site, d.variant].filter(Boolean).join(' · ')}</span>}
      </h1>
      {!d ? (
        <Loading what="dictionary" minHeight={300} />
      ) : (
        <>
          <div className="stats">
            <Stat label="Features" value={fmt.int(d.n_features ?? d.d_sae)} />
            <Stat label="Alive" value={fmt.int(d.alive)} />
            <Stat label="Dead" value={`${fmt.int(d.dead)} (${fmt.pct(d.dead_fraction)})`} />
            <Stat label="L0" value={fmt.num(d.l0)} />
            <Stat label="Explained variance" value={fmt.num(d.explained_variance)} />
            <Stat label="Tokens analyzed" value={fmt.int(d.tokens)} />
          </div>
          <section className="card">
            <h2>Feature density</h2>
            <Histogram
              rows={densityRows(d.density_histogram)}
              xLabel="log10 firing rate (alive features)"
              tooltip={(r) => `fires on ${densityRange(r)} of tokens`}
              testId="density-histogram"
            />
          </section>
          <Toolbar id={id} params={params} go={go} />
          {params.get('q') && <SearchResults id={id} q={params.get('q')!} onClear={() => go({ q: null })} />}
          <FeatureTable id={id} params={params} go={go} />
        </>
      )}
    </main>
  )
}

function Stat({ label, value }: { label: string; value: string }) {
  return (
    <div className="stat">
      <div className="stat-label">{label}</div>
      <div className="stat-value">{value}</div>
    </div>
  )
}

function Toolbar({ id, params, go }: { id: string; params: URLSearchParams; go: (c: Record<string, string | null>) => void }) {
  const [text, setText] = useState(params.get('q') ?? '')
  const [randomError, setRandomError] = useState<unknown>(null)
  const [busy, setBusy] = useState(false)
  useEffect(() => setText(params.get('q') ?? ''), [params])
  const random = async () => {
    setBusy(true)
    setRandomError(null)
    try {
      const f = await apiFetch<Feature>(api.random(id))
      navigate(href.feature(id, f.index))
    } catch (e) {
      setRandomError(e)
    } finally {
      setBusy(false)
    }
  }
  return (
    <>
      <div className="toolbar">
        <form
          className="search"
          onSubmit={(e) => {
            e.preventDefault()
            go({ q: text.trim() || null })
          }}
        >
          <input
            type="search"
            value={text}
            onChange={(e) => setText(e.target.value)}
            placeholder="Search features by token (e.g.  def)"
            aria-label="Search features by token"
            maxLength={100}
          />
          <button type="submit" className="btn">
            Search
          </button>
        </form>
        <button type="button" className="btn btn-primary" onClick={random} disabled={busy}>
          {busy ? 'Picking…' : 'Random feature'}
        </button>
      </div>
      {randomError ? <ErrorMessage error={randomError} /> : null}
    </>
  )
}

function SearchResults({ id, q, onClear }: { id: string; q: string; onClear: () => void }) {
  const res = useApi<SearchResult>(api.search(id, q))
  return (
    <section className="card" data-testid="search-results">
      <div className="card-head">
        <h2>
          Features matching <code>{JSON.stringify(q)}</code>
        </h2>
        <button type="button" className="btn btn-small" onClick={onClear}>
          Clear
        </button>
      </div>
      {res.error ? (
        <ErrorMessage error={res.error} onRetry={res.reload} />
      ) : !res.data || res.loading ? (
        <Loading what="search results" />
      ) : res.data.features.length === 0 ? (
        <Empty>No feature has this token among its top logit effects or top contexts.</Empty>
      ) : (
        <ul className="chips">
          {res.data.features.map((f) => (
            <li key={f.index}>
              <a href={href.feature(id, f.index)} className="chip" title={`matched in ${f.matched}`}>
                #{f.index} <span className="muted">{f.matched === 'logits' ? 'logits' : 'context'}</span>
              </a>
            </li>
          ))}
        </ul>
      )}
    </section>
  )
}

function FeatureTable({ id, params, go }: { id: string; params: URLSearchParams; go: (c: Record<string, string | null>) => void }) {
  const q = queryOf(params)
  const res = useApi<FeaturePage>(api.features(id, q))
  const [draft, setDraft] = useState<Record<string, string>>({})
  useEffect(() => setDraft(Object.fromEntries(FILTERS.map(([s]) => [s, params.get(s) ?? '']))), [params])
  const page = Math.floor(q.skip / PAGE_SIZE)
  const total = res.data?.total ?? 0
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE))
  const sortBy = (key: SortKey) =>
    go({ sort: key, desc: key === q.sort ? (q.descending ? '0' : '1') : key === 'index' ? '0' : '1', page: null })
  const arrow = (key: SortKey) => (q.sort === key ? (q.descending ? ' ▼' : ' ▲') : '')
  const invalid = FILTERS.some(([s]) => draft[s]?.trim() && parseNumber(draft[s]) === undefined)

  return (
    <section className="card">
      <div className="card-head">
        <h2>Features</h2>
        <span className="muted">{res.data ? `${total.toLocaleString('en-US')} match` : ''}</span>
      </div>
      <form
        className="filters"
        onSubmit={(e) => {
          e.preventDefault()
          if (!invalid) go({ ...Object.fromEntries(FILTERS.map(([s]) => [s, draft[s]?.trim() || null])), page: null })
        }}
      >
        {FILTERS.map(([short, , label, placeholder]) => (
          <label key={short}>
            {label}
            <input
              type="text"
              inputMode="decimal"
              value={draft[short] ?? ''}
              placeholder={placeholder}
              onChange={(e) => setDraft({ ...draft, [short]: e.target.value })}
              aria-invalid={!!draft[short]?.trim() && parseNumber(draft[short]) === undefined}
            />
          </label>
        ))}
        <button type="submit" className="btn" disabled={invalid}>
          Apply
        </button>
        <button
          type="button"
          className="btn btn-ghost"
          onClick={() => go({ ...Object.fromEntries(FILTERS.map(([s]) => [s, null])), page: null })}
        >
          Reset
        </button>
      </form>
      {res.error ? (
        <ErrorMessage error={res.error} onRetry={res.reload} />
      ) : !res.data ? (
        <Loading what="features" minHeight={400} />
      ) : (
        <div className={res.loading ? 'stale' : undefined}>
          <table className="table table-features" data-testid="feature-table">
            <thead>
              <tr>
                <th className="num sortable" onClick={() => sortBy('index')} aria-sort={ariaSort(q, 'index')}>
                  Feature{arrow('index')}
                </th>
                <th className="num sortable" onClick={() => sortBy('density')} aria-sort={ariaSort(q, 'density')}>
                  Density{arrow('density')}
                </th>
                <th className="num sortable" onClick={() => sortBy('max_activation')} aria-sort={ariaSort(q, 'max_activation')}>
                  Max activation{arrow('max_activation')}
                </th>
                <th className="num">Mean activation</th>
                <th className="num">Firings</th>
              </tr>
            </thead>
            <tbody>
              {res.data.features.length === 0 ? (
                <tr>
                  <td colSpan={5}>
                    <Empty>No feature passes these filters.</Empty>
                  </td>
                </tr>
              ) : (
                res.data.features.map((f) => (
                  <tr key={f.index}>
                    <td className="num">
                      <a href={href.feature(id, f.index)}>#{f.index}</a>
                    </td>
                    <td className="num">{formatDensity(f.density)}</td>
                    <td className="num">{formatActivation(f.max_activation)}</td>
                    <td className="num">{formatActivation(f.mean_activation)}</td>
                    <td className="num">{fmt.int(f.count)}</td>
                  </tr>
                ))
              )}
            </tbody>
          </table>
          <div className="pager">
            <button type="button" className="btn" disabled={page === 0} onClick={() => go({ page: String(page - 1) })}>
              ← Previous
            </button>
            <span>
              {total === 0
                ? 'none'
                : `${(q.skip + 1).toLocaleString('en-US')}–${Math.min(q.skip + PAGE_SIZE, total).toLocaleString('en-US')} of ${total.toLocaleString('en-US')} · page ${page + 1} of ${pages}`}
            </span>
            <button type="button" className="btn" disabled={page + 1 >= pages} onClick={() => go({ page: String(page + 1) })}>
              Next →
            </button>
          </div>
        </div>
      )}
    </section>
  )
}

function ariaSort(q: FeatureQuery, key: SortKey): 'ascending' | 'descending' | 'none' {
  return q.sort === key ? (q.descending ? 'descending' : 'ascending') : 'none'
}
