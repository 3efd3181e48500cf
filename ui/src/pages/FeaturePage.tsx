import { useEffect, useState } from 'react'
import { api, apiFetch, postJson, type Dictionary, type Feature, type LiveActivations, type LogitEffect } from '../lib/api'
import { useApi } from '../lib/useApi'
import { href, navigate } from '../lib/router'
import { activationRows, formatDensity } from '../lib/histogram'
import { formatActivation } from '../lib/highlight'
import { fmt } from '../lib/format'
import { Examples } from '../components/Examples'
import { Histogram } from '../components/Histogram'
import { TokenText } from '../components/TokenText'
import { Empty, ErrorMessage, Loading } from '../components/Status'

/** One feature: statistics, examples, logit effects, neighbours, explanation and live inference.
 * Left/right arrow keys go to the previous/next feature. */
export function FeaturePage({ id, index }: { id: string; index: number }) {
  const res = useApi<Feature>(api.feature(id, index))
  const dict = useApi<Dictionary>(api.dictionary(id))
  const dSae = res.data?.d_sae ?? dict.data?.d_sae ?? null
  const hasPrev = index > 0
  const prev = dSae !== null ? Math.min(index - 1, dSae - 1) : index - 1
  const hasNext = dSae === null || index + 1 < dSae

  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const t = e.target as HTMLElement | null
      if (e.altKey || e.ctrlKey || e.metaKey || e.shiftKey) return
      if (t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName))) return
      if (e.key === 'ArrowLeft' && hasPrev) navigate(href.feature(id, prev))
      else if (e.key === 'ArrowRight' && hasNext) navigate(href.feature(id, index + 1))
      else return
      e.preventDefault()
    }
    window.addEventListener('keydown', onKey)
    return () => window.removeEventListener('keydown', onKey)
  }, [id, index, prev, hasPrev, hasNext])

  const f = res.data
  const stale = res.loading || (f !== undefined && f.index !== index)
  const notFound = (
    <>
      Feature #{index} not found in dictionary “{id}”{dSae !== null ? ` (it has features 0–${dSae - 1})` : ''}.{' '}
      <a href={href.dictionary(id)}>Browse its features</a>
    </>
  )
  return (
    <main className="page">
      <nav className="crumbs">
        <a href={href.dictionaries()}>Dictionaries</a> / <a href={href.dictionary(id)}>{id}</a> / <span>Feature #{index}</span>
      </nav>
      <div className="feature-head">
        <h1>
          Feature #{index}
          {dict.data && <span className="subtitle">{[dict.data.model, dict.data.site].filter(Boolean).join(' · ')}</span>}
        </h1>
        <div className="feature-nav">
          <a className={`btn${hasPrev ? '' : ' disabled'}`} href={hasPrev ? href.feature(id, prev) : undefined} aria-disabled={!hasPrev}>
            ← #{hasPrev ? prev : '–'}
          </a>
          <a className={`btn${hasNext ? '' : ' disabled'}`} href={hasNext ? href.feature(id, index + 1) : undefined} aria-disabled={!hasNext}>
            #{index + 1} →
          </a>
          <RandomButton id={id} />
          <span className="muted hint">← → keys</span>
        </div>
      </div>
      {res.error ? (
        <ErrorMessage error={res.error} onRetry={res.reload} notFound={notFound} />
      ) : !f ? (
        <Loading what={`feature #${index}`} minHeight={600} />
      ) : (
        <div
          className={stale ? 'feature stale' : 'feature'}
          data-testid="feature"
          data-feature-index={f.index}
          data-loading={stale ? 'true' : 'false'}
        >
          <FeatureBody f={f} id={id} />
        </div>
      )}
    </main>
  )
}

function RandomButton({ id }: { id: string }) {
  const [busy, setBusy] = useState(false)
  return (
    <button
      type="button"
      className="btn"
      disabled={busy}
      onClick={async () => {
        setBusy(true)
        try {
          const f = await apiFetch<Feature>(api.random(id))
          navigate(href.feature(id, f.index))
        } catch {
          /* the page shows the backend's state on its next load */
        } finally {
          setBusy(false)
        }
      }}
    >
      {busy ? 'Picking…' : 'Random'}
    </button>
  )
}

function FeatureBody({ f, id }: { f: Feature; id: string }) {
  const max = f.max_activation
  return (
    <>
      <div className="stats">
        <Stat label="Density" value={formatDensity(f.density)} testId="stat-density" />
        <Stat label="Firings" value={fmt.int(f.count)} />
        <Stat label="Max activation" value={formatActivation(f.max_activation)} testId="stat-max" />
        <Stat label="Mean activation" value={formatActivation(f.count ? f.mean_activation : null)} />
        <Stat label="Min activation" value={formatActivation(f.count ? f.min_activation : null)} />
      </div>
      <div className="columns">
        <div className="col-main">
          <section className="card">
            <h2>Top activations</h2>
            {f.count === 0 ? (
              <Empty>This feature never fired on the analyzed tokens (dead).</Empty>
            ) : (
              <Examples examples={f.top} max={max} testId="top-examples" />
            )}
          </section>
          {f.bands.length > 0 && (
            <section className="card">
              <h2>Activation quantiles</h2>
              <p className="muted small">
                Firings split into bands of the activation range; examples drawn at random from each band, colored relative to the
                feature's max.
              </p>
              {[...f.bands].reverse().map((b, i) => (
                <div className="band" key={i}>
                  <h3>
                    {formatActivation(b.lo)} – {formatActivation(b.hi)}
                    <span className="muted">
                      {' '}
                      · {fmt.int(b.count)} firings ({fmt.pct(b.fraction)})
                    </span>
                  </h3>
                  <Examples examples={b.examples} max={max} />
                </div>
              ))}
            </section>
          )}
          {f.count > 0 && (
            <section className="card">
              <h2>Random firings</h2>
              <Examples examples={f.random} max={max} testId="random-examples" />
            </section>
          )}
        </div>
        <aside className="col-side">
          <Explanation key={`${id}:${f.index}`} id={id} index={f.index} text={f.explanation} />
          <LiveBox id={id} index={f.index} max={max} />
          <section className="card">
            <h2>Activation histogram</h2>
            <Histogram
              rows={activationRows(f.histogram)}
              xLabel="activation (log-spaced bins)"
              tooltip={(r) => `activation ${formatActivation(r.lo)} – ${formatActivation(r.hi)}`}
              color="#ea580c"
              height={160}
              testId="activation-histogram"
            />
          </section>
          <section className="card">
            <h2>Logit effects</h2>
            {!f.logits ? (
              <Empty>Not computed for this dictionary.</Empty>
            ) : (
              <div className="logits">
                <LogitTable title="Promoted" rows={f.logits.top} cls="pos" />
                <LogitTable title="Suppressed" rows={f.logits.bottom} cls="neg" />
              </div>
            )}
          </section>
          <section className="card">
            <h2>Nearest features</h2>
            {!f.neighbours || f.neighbours.length === 0 ? (
              <Empty>None stored.</Empty>
            ) : (
              <ul className="chips" data-testid="neighbours">
                {f.neighbours.map((n) => (
                  <li key={n.index}>
                    <a className="chip" href={href.feature(id, n.index)} title="decoder cosine similarity">
                      #{n.index} <span className="muted">{n.cosine === null ? '–' : n.cosine.toFixed(2)}</span>
                    </a>
                  </li>
                ))}
              </ul>
            )}
          </section>
        </aside>
      </div>
    </>
  )
}

function Stat({ label, value, testId }: { label: string; value: string; testId?: string }) {
  return (
    <div className="stat" data-testid={testId}>
      <div className="stat-label">{label}</div>
      <div className="stat-value">{value}</div>
    </div>
  )
}

function LogitTable({ title, rows, cls }: { title: string; rows: LogitEffect[]; cls: string }) {
  return (
    <table className="table table-compact">
      <thead>
        <tr>
          <th>{title}</th>
          <th className="num">logit</th>
        </tr>
      </thead>
      <tbody>
        {rows.map((r, i) => (
          <tr key={i}>
            <td>
              <code className="token-code">{JSON.stringify(r.token).slice(1, -1)}</code>
            </td>
            <td className={`num ${cls}`}>{r.value === null ? '–' : r.value.toFixed(3)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  )
}

const TOKEN_KEY = 'saes.writeToken'

function Explanation({ id, index, text }: { id: string; index: number; text: string | null }) {
  const [current, setCurrent] = useState(text)
  const [editing, setEditing] = useState(false)
  const [draft, setDraft] = useState(text ?? '')
  const [token, setToken] = useState(() => localStorage.getItem(TOKEN_KEY) ?? '')
  const [error, setError] = useState<unknown>(null)
  const [saving, setSaving] = useState(false)
  const save = async () => {
    setSaving(true)
    setError(null)
    try {
      const out = await postJson<{ text: string }>(api.explanation(id, index), { text: draft }, { 'X-Write-Token': token }, 'PUT')
      localStorage.setItem(TOKEN_KEY, token)
      setCurrent(out.text)
      setEditing(false)
    } catch (e) {
      setError(e)
    } finally {
      setSaving(false)
    }
  }
  return (
    <section className="card">
      <div className="card-head">
        <h2>Explanation</h2>
        {!editing && (
          <button type="button" className="btn btn-small" onClick={() => setEditing(true)}>
            Edit
          </button>
        )}
      </div>
      {!editing ? (
        current ? (
          <p className="explanation" data-testid="explanation">
            {current}
          </p>
        ) : (
          <Empty>No explanation yet.</Empty>
        )
      ) : (
        <form
          className="explain-form"
          onSubmit={(e) => {
            e.preventDefault()
            void save()
          }}
        >
          <textarea value={draft} onChange={(e) => setDraft(e.target.value)} rows={3} maxLength={4000} placeholder="What does this feature detect?" />
          <input
            type="password"
            value={token}
            onChange={(e) => setToken(e.target.value)}
            placeholder="write token (SAES_WRITE_TOKEN)"
            aria-label="write token"
          />
          <div className="row">
            <button type="submit" className="btn btn-primary" disabled={saving || !draft.trim()}>
              {saving ? 'Saving…' : 'Save'}
            </button>
            <button type="button" className="btn btn-ghost" onClick={() => setEditing(false)}>
              Cancel
            </button>
          </div>
          {error ? <ErrorMessage error={error} /> : null}
        </form>
      )}
    </section>
  )
}

function LiveBox({ id, index, max }: { id: string; index: number; max: number }) {
  const [text, setText] = useState('')
  const [result, setResult] = useState<LiveActivations | null>(null)
  const [error, setError] = useState<unknown>(null)
  const [busy, setBusy] = useState(false)
  useEffect(() => {
    setResult(null)
    setError(null)
  }, [id, index])
  const run = async () => {
    if (!text.trim()) return
    setBusy(true)
    setError(null)
    try {
      setResult(await postJson<LiveActivations>(api.activations(id, index), { text }))
    } catch (e) {
      setError(e)
      setResult(null)
    } finally {
      setBusy(false)
    }
  }
  const peak = result ? result.values.reduce((best, v, i) => (v > result.values[best] ? i : best), 0) : -1
  return (
    <section className="card" data-testid="live">
      <h2>Try your own text</h2>
      <form
        onSubmit={(e) => {
          e.preventDefault()
          void run()
        }}
      >
        <textarea
          value={text}
          onChange={(e) => setText(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) void run()
          }}
          rows={3}
          maxLength={2000}
          placeholder="Type or paste text, then Run (Ctrl+Enter)"
          aria-label="text for live inference"
        />
        <div className="row">
          <button type="submit" className="btn btn-primary" disabled={busy || !text.trim()}>
            {busy ? 'Running…' : 'Run'}
          </button>
          {busy && <span className="muted small">The first run loads the model (a few seconds).</span>}
        </div>
      </form>
      {error ? <ErrorMessage error={error} /> : null}
      {result && (
        <div className="live-result" data-testid="live-result">
          <div className="live-tokens">
            <TokenText tokens={result.tokens} acts={result.values} max={max} />
          </div>
          <div className="muted small">
            {result.values[peak] > 0
              ? `Max ${formatActivation(result.values[peak])} on ${JSON.stringify(result.tokens[peak])} (feature max ${formatActivation(max)}).`
              : 'This feature does not fire on this text.'}
          </div>
        </div>
      )}
    </section>
  )
}

